import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import pytest

from videdit.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "red-circle.mp4"
BASE = ["--model", "tiny-random", "--steps", "2", "--no-cache", "-q"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def bad_inputs(tmp, shared):
    text = tmp / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    notes = tmp / "notes.txt"   # ffmpeg's tty demuxer would draw it as frames of its characters
    notes.write_text((Path(__file__).resolve().parents[1] / "README.md").read_text())
    truncated = tmp / "truncated.mp4"
    truncated.write_bytes((shared / "videos" / "dog.mp4").read_bytes()[:2000])
    return {
        "missing file": ([tmp / "nope.mp4"], "no such file"),
        "text renamed .mp4": ([text], "not a readable video"),
        "text file": ([notes], "is a text file, not a video; pass an mp4/mov/mkv/webm/gif file"),
        "truncated mp4": ([truncated], "video"),
        "zero frames": ([shared / "videos" / "dog.mp4", "--max-frames", "0"], "max_frames"),
        "unknown inversion": ([shared / "videos" / "dog.mp4", "--inversion", "magic"], "unknown inversion 'magic'"),
        "unknown editor": ([shared / "videos" / "dog.mp4", "--editor", "magic"], "unknown editor 'magic'"),
    }


@pytest.mark.parametrize("case", ["missing file", "text renamed .mp4", "text file", "truncated mp4", "zero frames",
                                  "unknown inversion", "unknown editor"])
def test_bad_input_is_one_line_and_leaves_nothing(case, tmp_path, shared_data, capsys):
    args, message = bad_inputs(tmp_path, shared_data)[case]
    out = tmp_path / "out" / "edit.mp4"
    out.parent.mkdir()
    code, _, err = run(capsys, "edit", *args, "-t", "x", "-o", out, *BASE)
    assert code == 2
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("videdit: error:") and message in lines[0], err
    assert list(out.parent.iterdir()) == []


def test_output_equal_to_input_is_refused(tmp_path, shared_data, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes((shared_data / "videos" / "truck.mp4").read_bytes())
    before = clip.read_bytes()
    code, _, err = run(capsys, "edit", clip, "-t", "x", "-o", clip, *BASE)
    assert code == 2 and "overwrite the input" in err and len(err.strip().splitlines()) == 1
    assert clip.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


@pytest.mark.parametrize("argv, message", [
    (["-o", "{out}/edit.gif", "--preview", "{out}/edit.gif"],
     "--preview {out}/edit.gif is the edit's own output (-o); choose another --preview path"),
    (["-o", "{out}/edit.mp4", "--preview", "{out}/p.mp4"], "--preview {out}/p.mp4: a preview is a GIF; give it a .gif name"),
    (["-o", "{out}/edit.mp4", "--preview", "{out}/no/p.gif"], "the output folder {out}/no does not exist; create it or "
     "choose another --preview path"),
    (["-o", "{out}/edit.mp4", "--report", "{out}/no/r.json"], "the --report folder {out}/no does not exist; create it or "
     "choose another --report path"),
    (["-o", "{out}/edit.mp4", "--report", "{out}/edit.mp4"], "--report {out}/edit.mp4 is also {out}/edit.mp4; choose "
     "another --report path"),
])
def test_a_bad_preview_or_report_path_is_refused_before_any_work(argv, message, tmp_path, capsys, monkeypatch):
    import videdit.pipeline

    monkeypatch.setattr(videdit.pipeline, "_resolve_model", None)   # refused before the model loads
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run(capsys, "edit", SAMPLE, "-t", "x", *[a.format(out=out) for a in argv], *BASE)
    assert code == 2 and one_error_line(err) == "videdit: error: " + message.format(out=out)
    assert list(out.iterdir()) == []


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a machine without CUDA")
def test_a_device_this_torch_lacks_is_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "edit", SAMPLE, "-t", "x", "-o", tmp_path / "o.mp4", *BASE, "--device", "cuda")
    assert code == 2 and one_error_line(err) == ("videdit: error: device 'cuda': this torch sees no CUDA GPU (a CPU "
                                                 "build, or no driver); use --device cpu or auto")
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_inputs_warning_is_one_line(tmp_path, shared_data, capsys):
    """The broken-timestamps clip (7 of its 8 declared frames decode): videdit's warning in one line, as its
    errors are, not Python's two (file:line: category, then the source line)."""
    code, _, err = run(capsys, "preview", shared_data / "videos" / "camel-broken-timestamps.mp4", "-o", tmp_path / "c.gif")
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 0 and len(lines) == 1 and lines[0].startswith("videdit: warning: "), err
    assert "timestamps are broken" in lines[0] and "BrokenVideoWarning" not in err


def test_preview_needs_a_gif_name(tmp_path, capsys):
    code, _, err = run(capsys, "preview", SAMPLE, "-o", tmp_path / "p.mp4")
    assert code == 2 and one_error_line(err) == f"videdit: error: preview writes a GIF; give -o a .gif name, not {tmp_path / 'p.mp4'}"


def test_man_skiing_keeps_size_rate_and_audio(tmp_path, shared_data, capsys):
    out = tmp_path / "ski.mp4"
    code, stdout, err = run(capsys, "edit", shared_data / "videos" / "man-skiing.mp4", "-s", "a man is skiing",
                            "-t", "mickey mouse is skiing on the snow", "-o", out, "--size", "64",
                            "--max-frames", "24", *BASE, "--steps", "1")   # one step: the codec is what is checked
    assert code == 0, err
    assert "written at 718x718;" in stdout   # the 717x717 source with its edge repeated, as the file holds it
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert (v.width, v.height) == (718, 718)
        assert v.average_rate == Fraction(30000, 1001)
        assert sum(1 for _ in c.decode(v)) == 24
        assert len(c.streams.audio) == 1
        audio = c.streams.audio[0]
        assert float(audio.duration * audio.time_base) == pytest.approx(24 * 1001 / 30000, abs=0.1)


def test_invert_then_edit_hits_the_cache(tmp_path, shared_data, capsys):
    clip = shared_data / "videos" / "dog.mp4"
    common = ["--model", "tiny-random", "--steps", "3", "--max-frames", "4", "--size", "64",
              "--cache-dir", tmp_path / "c", "-s", "a dog"]
    code, out, err = run(capsys, "invert", clip, *common)
    assert code == 0 and "inverted 4 frames at 64x64 in 1 window (0 already cached)" in out
    # stderr is no terminal here: the bars as plain lines, the nested ones (a window's inversion) not at all
    assert "\r" not in err and "\x1b" not in err and "invert:" not in err
    assert [line.split("|")[0] for line in err.splitlines() if "|" in line] == ["windows:   0%", "windows: 100%"]
    code, out, _ = run(capsys, "edit", clip, *common, "-t", "a cat", "-o", tmp_path / "e.mp4")
    assert code == 0 and "1/1 windows from cache" in out


def test_speed_options_load_the_model_once_and_key_the_cache(tmp_path, shared_data, capsys):
    """--channels-last changes no cached inversion; --vae-dtype and --vae-tiling change the
    latents, so their inversions are cached apart (a second run with them hits its own)."""
    clip = shared_data / "videos" / "dog.mp4"
    common = ["--model", "tiny-random", "--steps", "2", "--max-frames", "2", "--size", "64",
              "--cache-dir", tmp_path / "c", "-s", "a dog", "-t", "a cat"]
    outputs = {}
    for i, extra in enumerate([[], ["--channels-last"], ["--vae-dtype", "bf16", "--vae-tiling"],
                               ["--vae-dtype", "bf16", "--vae-tiling"]]):
        code, out, err = run(capsys, "edit", clip, *common, *extra, "-o", tmp_path / f"e{i}.mp4")
        assert code == 0, err
        outputs[i] = out
    assert [("1/1 windows from cache" in outputs[i]) for i in range(4)] == [False, True, False, True]
    assert "compiling" not in outputs[0]


def test_preview_and_methods(tmp_path, shared_data, capsys):
    code, out, _ = run(capsys, "preview", shared_data / "videos" / "wolf.mp4", "-o", tmp_path / "w.gif",
                       "--max-frames", "10", "--max-side", "64")
    assert code == 0 and (tmp_path / "w.gif").stat().st_size > 0
    code, out, _ = run(capsys, "methods")
    assert code == 0 and "ddim" in out and "plain" in out and "guidance=1.0" in out
    assert max(len(line) for line in out.splitlines()) < 100   # wrapped (no terminal: 100 columns)


def test_methods_shows_the_named_ones(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "70")
    code, out, _ = run(capsys, "methods", "tokenflow", "ddim")
    lines = out.splitlines()
    assert code == 0 and [line for line in lines if not line.startswith(" ")] == [
        "inversions:", "temporal modules and frame stages:"]
    assert [line.split()[0] for line in lines if line.startswith("  ") and line[2] != " "] == ["ddim", "tokenflow"]
    assert max(len(line) for line in lines) < 70 and "batch_size=8" in out
    code, _, err = run(capsys, "methods", "tokenflw")
    assert code == 2 and err.strip() == ("videdit: error: no method named 'tokenflw' (did you mean 'tokenflow'?); "
                                         "`videdit methods` lists them all")


@pytest.mark.parametrize("argv, n_frames, width", [
    ([], 24, 64),                                       # the sample's 24 frames at 8 fps, all kept
    (["--gif-frames", "6"], 6, 64),                     # 6 of the 24, picked evenly
    (["--max-frames", "4"], 4, 64),                     # only 4 read
    (["--max-frames", "10", "--gif-frames", "5", "--compare", SAMPLE], 5, 128),  # 10 of each read, 5 shown
])
def test_preview_gif_frames_and_max_frames(argv, n_frames, width, tmp_path, capsys):
    from PIL import Image

    gif = tmp_path / "p.gif"
    code, _, err = run(capsys, "preview", SAMPLE, "-o", gif, *argv)
    assert code == 0, err
    with Image.open(gif) as im:
        assert (im.n_frames, im.size) == (n_frames, (width, 64))


def test_preview_compares_a_part_edit_with_the_frames_it_read(tmp_path, capsys):
    """An edit of frames 10-21 lines up with --compare's frames 10-21 (--start-frame/--end-frame, as
    given to the edit); a count that differs names those options."""
    import numpy as np
    from PIL import Image

    from videdit import io

    part = tmp_path / "part"
    io.write_frames_dir(part, io.read_clip(SAMPLE, io.ReadOptions(start_frame=10, end_frame=22))[0])
    code, _, err = run(capsys, "preview", part, "-o", tmp_path / "a.gif", "--compare", SAMPLE)
    assert code == 2 and err.strip() == (f"videdit: error: --compare has 24 frames but {part} has 12; select the "
                                         "frames the edit read with the --start, --end, --start-frame, --end-frame, "
                                         "--stride or --fps given to videdit edit")
    gif = tmp_path / "b.gif"
    code, _, err = run(capsys, "preview", part, "-o", gif, "--compare", SAMPLE, "--start-frame", "10",
                       "--end-frame", "22", "--max-side", "64")
    assert code == 0, err
    with Image.open(gif) as im:
        first = np.asarray(im.convert("RGB")).astype(int)
    source = io.read_clip(SAMPLE, io.ReadOptions(size=64))[0].astype(int)
    errors = [np.abs(first[:, :64] - f).mean() for f in source]   # the left panel against each source frame
    assert int(np.argmin(errors)) == 10 and errors[10] < 0.5 * errors[0], errors
    # the same part in seconds (the sample runs at 8 fps), as `videdit edit --start 1.25 --end 2.75` read it
    seconds = tmp_path / "c.gif"
    code, _, err = run(capsys, "preview", part, "-o", seconds, "--compare", SAMPLE, "--start", "1.25", "--end",
                       "2.75", "--max-side", "64")
    assert code == 0, err
    assert seconds.read_bytes() == gif.read_bytes()
    code, _, err = run(capsys, "preview", part, "-o", gif, "--start-frame", "10")
    assert code == 2 and "select --compare's frames; give --compare" in err


def test_output_piped_into_a_reader_that_stops_early_ends_quietly():
    """`videdit methods | head -1`: no BrokenPipeError traceback, the exit status a shell gives SIGPIPE."""
    import fcntl

    proc = subprocess.Popen([sys.executable, "-m", "videdit.cli", "methods"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    fcntl.fcntl(proc.stdout.fileno(), 1031, 4096)   # F_SETPIPE_SZ: the output (about 30 kB) cannot all fit
    assert proc.stdout.readline() == b"inversions:\n"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and err == ""


def test_console_script_help():
    for argv in ([], ["edit"], ["invert"], ["preview"]):
        res = subprocess.run([sys.executable, "-m", "videdit.cli", *argv, "--help"], capture_output=True, text=True)
        assert res.returncode == 0 and "usage: videdit" in res.stdout


def test_config_file_sets_defaults_and_flags_win(tmp_path, shared_data, capsys, monkeypatch):
    import videdit.pipeline
    from videdit.errors import VideditError

    seen = {}

    def fake_edit(*args, **kwargs):
        seen.update(kwargs)
        raise VideditError("stop")

    monkeypatch.setattr(videdit.pipeline, "edit_video", fake_edit)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: 7\nguidance: 3.5\ninversion: ddim\ninversion_params: {guidance: 2.0}\n")
    code, _, err = run(capsys, "edit", shared_data / "videos" / "dog.mp4", "-t", "x", "-o", tmp_path / "o.mp4",
                       "--config", cfg, "--steps", "9", "-I", "guidance=1.5")
    assert code == 2 and "stop" in err
    assert seen["steps"] == 9 and seen["guidance"] == 3.5 and seen["inversion_params"] == {"guidance": 1.5}


def test_config_by_a_presets_name(tmp_path, capsys):
    """--config tokenflow reads configs/tokenflow.yaml; a misspelt name is one line with the nearest preset."""
    from videdit.cli import _with_config, build_parser

    argv = ["edit", str(SAMPLE), "-t", "x", "-o", "o.mp4", "--config"]
    named, path = (_with_config(build_parser(), argv + [c]) for c in ("tokenflow", str(CONFIGS / "tokenflow.yaml")))
    assert named.editor == path.editor == "plug_and_play" and named.temporal == path.temporal != []
    code, _, err = run(capsys, *argv, "tokenflw")
    line = one_error_line(err)
    assert code == 2 and line.startswith("videdit: error: no config file tokenflw and no preset of that name (did you "
                                         "mean 'tokenflow'?); the presets: bdia, blended,"), line


def test_bad_config_is_one_line(tmp_path, shared_data, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stepz: 7\n")
    code, _, err = run(capsys, "edit", shared_data / "videos" / "dog.mp4", "-t", "x", "-o", tmp_path / "o.mp4",
                       "--config", cfg)
    assert code == 2 and "unknown option(s) stepz" in err and len(err.strip().splitlines()) == 1


def one_error_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("videdit: error: "), err
    return lines[0]


def run_exit(capsys, *argv):
    """As run, whether main returns the exit code or argparse exits with it."""
    try:
        code = main(list(map(str, argv)))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


NOT_YAML = "the value is not valid YAML"


@pytest.mark.parametrize("argv, message", [
    (["edit", SAMPLE, "-t", "x", "-o", "o.mp4", "-E", "mask=[1,"],
     f"argument --editor-param/-E: mask=[1,: {NOT_YAML} (expected the node content, but found '<stream end>'); "
     "quote strings, close brackets"),
    (["invert", SAMPLE, "-I", "guidance={a"],
     f"argument --inversion-param/-I: guidance={{a: {NOT_YAML} (expected ',' or '}}', but got '<stream end>')"),
    (["eval", SAMPLE, SAMPLE, "--flow-param", "preset='fast"],
     f"argument --flow-param: preset='fast: {NOT_YAML} (found unexpected end of stream)"),
    (["edit", SAMPLE, "-t", "x", "-o", "o.mp4", "--temporal", "keyframes:every=[1"],
     f"argument --temporal: every=[1: {NOT_YAML} (expected ',' or ']', but got '<stream end>')"),
    (["edit", SAMPLE, "-t", "x", "-o", "o.mp4", "-E", "mask"], "argument --editor-param/-E: expected NAME=VALUE"),
    (["edit", SAMPLE, "-o", "o.mp4"], "the following arguments are required: -t/--target"),
])
def test_a_malformed_flag_is_one_line_and_exit_2(argv, message, capsys):
    code, _, err = run_exit(capsys, *argv)
    assert code == 2 and message in one_error_line(err)


def test_invert_refuses_no_cache(capsys):
    code, _, err = run_exit(capsys, "invert", SAMPLE, "--no-cache", "--steps", "1", "--size", "64")
    assert code == 2
    assert one_error_line(err) == ("videdit: error: invert fills the inversion cache; "
                                   "--no-cache would throw its work away")
    code, out, _ = run_exit(capsys, "invert", "--help")
    assert code == 0 and "--cache-dir" in out and "--no-cache" not in out


@pytest.mark.parametrize("text, parsed", [
    ("keyframes:flow={colour: gray, method: dis}", ("keyframes", {"flow": {"colour": "gray", "method": "dis"}})),
    ("keyframes:flow={colour: gray, method: dis},every=2",
     ("keyframes", {"flow": {"colour": "gray", "method": "dis"}, "every": 2})),
    ("cross_frame:mode=first,every=3", ("cross_frame", {"mode": "first", "every": 3})),
    ("x:a=[1, 2],b='p, q',c=\"{r, s}\"", ("x", {"a": [1, 2], "b": "p, q", "c": "{r, s}"})),
    ("flow_propagation", ("flow_propagation", {})),
])
def test_temporal_splits_options_at_top_level_commas_only(text, parsed):
    from videdit.cli import build_parser

    args = build_parser().parse_args(["edit", "in.mp4", "-t", "x", "-o", "o.mp4", "--temporal", text])
    assert args.temporal == [parsed]


def test_a_config_value_is_not_read_as_yaml_again(tmp_path):
    """-E mask=[1, is malformed YAML; the same text as a config file's (quoted) value is a string."""
    from videdit.cli import _with_config, build_parser

    cfg = tmp_path / "c.yaml"
    cfg.write_text("editor_params: {mask: '[1,'}\n")
    args = _with_config(build_parser(), ["edit", "in.mp4", "-t", "x", "-o", "o.mp4", "--config", str(cfg)])
    assert dict(args.editor_param) == {"mask": "[1,"}


def test_malformed_yaml_config_is_one_line_naming_the_file_and_the_place(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("inversion: [ddim\n")
    code, _, err = run(capsys, "edit", SAMPLE, "-t", "x", "-o", tmp_path / "o.mp4", "--config", cfg)
    assert code == 2
    assert one_error_line(err) == (f"videdit: error: config {cfg} is not valid YAML: line 2, column 1: expected ',' "
                                   "or ']', but got '<stream end>' (while parsing a flow sequence started at line 1, "
                                   "column 12)")


def test_shipped_configs_parse(capsys):
    from videdit.cli import _with_config, build_parser

    for cfg in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        args = _with_config(build_parser(), ["edit", "in.mp4", "-t", "x", "-o", "o.mp4", "--config", str(cfg)])
        assert args.inversion and args.editor, cfg


def test_invert_with_a_preset_fills_the_cache_its_edit_reads(tmp_path, shared_data, capsys):
    """`videdit invert --config PRESET` takes the preset's inversion (direct for recolour) and
    leaves out what only the edit reads (editor, temporal); the edit with the same preset then
    takes every window from the cache, its keyframes cut out of the windows' inversions."""
    preset = Path(__file__).resolve().parents[1] / "configs" / "recolour.yaml"
    clip = shared_data / "videos" / "dog.mp4"
    kw = ["--model", "tiny-random", "--steps", "2", "--cache-dir", tmp_path / "cache", "-q", "--max-frames", "6",
          "--size", "64", "--window", "4", "--config", preset]
    code, out, _ = run(capsys, "invert", clip, "-s", "a dog", *kw)
    assert code == 0 and "inverted 6 frames at 64x64 in 2 windows (0 already cached)" in out
    code, out, _ = run(capsys, "edit", clip, "-s", "a dog", "-t", "a red dog", "-o", tmp_path / "o.mp4", *kw)
    assert code == 0 and "2/2 windows from cache" in out
    code, _, err = run(capsys, "invert", clip, "--config", tmp_path / "missing.yaml")
    assert code == 2 and "cannot read config" in err


def test_steps_offset_changes_the_schedule_and_the_cache_key(tmp_path, capsys, monkeypatch):
    """`--steps-offset 0` (the reference codes' DDIM scheduler) shifts every timestep by -1 from
    tiny-random's config (steps_offset 1): 3 steps run at 666, 333, 0 instead of 667, 334, 1, and
    the inversion is cached under its own key, so an edit without the flag does not read it."""
    import videdit.pipeline
    from videdit.core.schedule import make_schedule

    runs = []

    def spy(config, steps, steps_offset=None):
        schedule = make_schedule(config, steps, steps_offset)
        runs.append(schedule.timesteps.tolist())
        return schedule

    monkeypatch.setattr(videdit.pipeline, "make_schedule", spy)
    common = ["--model", "tiny-random", "--steps", "3", "--max-frames", "1", "--size", "64", "-q",
              "--cache-dir", tmp_path / "c", "-s", "a red circle"]
    code, out, _ = run(capsys, "invert", SAMPLE, *common, "--steps-offset", "0")
    assert code == 0 and "(0 already cached)" in out and runs == [[666, 333, 0]]
    runs.clear()
    code, out, _ = run(capsys, "edit", SAMPLE, *common, "-t", "a blue circle", "-o", tmp_path / "model.mp4")
    assert code == 0 and "0/1 windows from cache" in out and {tuple(r) for r in runs} == {(667, 334, 1)}
    runs.clear()
    code, out, _ = run(capsys, "edit", SAMPLE, *common, "-t", "a blue circle", "-o", tmp_path / "zero.mp4",
                       "--steps-offset", "0")
    assert code == 0 and "1/1 windows from cache" in out and {tuple(r) for r in runs} == {(666, 333, 0)}
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == 2
