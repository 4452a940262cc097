"""`videdit serve`'s logic without a browser: the registry-generated options against `videdit
methods`, presets, the page's settings -> YAML -> `videdit edit --config` round trip, upload
checks, the progress hook, cancel. The page itself: tests/test_serve_browser.py."""

import sys
import zipfile
from io import StringIO
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import yaml

from videdit import cli, io, serve
from videdit.errors import VideditError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "red-circle.mp4"
BLUE = "a blue circle on a gray background"
RED = "a red circle on a gray background"


def _methods_listing(capsys, monkeypatch) -> list[tuple[str, str, str]]:
    """(title, name, options line) of every entry `videdit methods` prints (on a terminal wide enough
    that no line wraps)."""
    monkeypatch.setenv("COLUMNS", "100000")
    assert cli.main(["methods"]) == 0
    out, entries, title = capsys.readouterr().out, [], None
    for line in out.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            title = line[:-1]
        elif line.startswith("  ") and not line.startswith("   "):
            entries.append([title, line.split()[0], ""])
        elif line.strip().startswith("options: "):
            entries[-1][2] = line.strip().removeprefix("options: ")
    return [tuple(e) for e in entries]


def test_options_panel_lists_what_videdit_methods_lists(capsys, monkeypatch):
    listed = _methods_listing(capsys, monkeypatch)
    page = [(e.kind, e.name, e.options_line()) for e in serve.method_entries()]
    assert page == listed
    assert len(page) == sum(len(r) for _, r in cli.method_registries())
    assert {k for k, _, _ in page} == {"inversions", "editors", "temporal modules and frame stages"}
    # every option has a type and a default, as the panel shows them
    p2p = next(e for e in serve.method_entries() if e.name == "prompt_to_prompt")
    assert dict((k, t) for k, t, _ in p2p.options)["cross_replace"] == "float"
    text = serve.options_reference(serve.method_entries(), {"editors": ["prompt_to_prompt"]})
    assert "**prompt_to_prompt**" in text and "- `cross_replace`: float = `0.8`" in text


def test_presets_have_one_line_descriptions():
    table = serve.presets()
    assert sorted(table) == sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert table["recolour"].description == "Colour and appearance edits of a clip, held steady"
    assert table["ddim"].description == "Plain DDIM inversion + regeneration under the target prompt (the baseline)."
    # not cut at "et al." nor inside brackets nor after a leading "NAME:"
    assert table["blended"].description == ("Blended latent diffusion (Avrahami et al. 2023), with the defaults of "
                                            "the official code (omriav/blended-latent-diffusion, "
                                            "scripts/text_editing_SD2.py)")
    assert table["tokenflow-plus"].description == ("videdit's variant of TokenFlow (configs/tokenflow.yaml is the "
                                                   "official algorithm).")
    assert table["fatezero"].description == "FateZero (Qi et al. 2023), zero-shot"
    for p in table.values():
        assert p.description and "\n" not in p.description, p.name


def _recolour(**kw) -> serve.PageSettings:
    s = serve.preset_settings("recolour", serve.PageSettings(source=RED, target=BLUE))
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def test_settings_yaml_round_trip_through_videdit_edit_config(tmp_path):
    s = _recolour(steps=4, guidance="4.5", seed=3, start_frame=2, end_frame=10, size="64x48")
    assert (s.inversion, s.editor, s.temporal) == ("direct", "prompt_to_prompt", ["keyframes", "pixels_bilateral"])
    config = serve.build_config(s, model="toy")
    path = serve.write_preset(tmp_path / "run1.yaml", config, 1)
    assert yaml.safe_load(path.read_text()) == config
    args = cli._with_config(cli.build_parser(), ["edit", str(SAMPLE), "-o", str(tmp_path / "o.mp4"),
                                                 "--config", str(path)])
    kw = cli.edit_kwargs(args)
    assert (kw["source_prompt"], kw["target_prompt"], kw["model"]) == (RED, BLUE, "toy")
    assert (kw["steps"], kw["guidance"], kw["seed"]) == (4, 4.5, 3)
    assert (kw["inversion"], kw["editor"], kw["editor_params"]) == ("direct", "prompt_to_prompt", {"mode": "auto"})
    assert kw["temporal"] == {"keyframes": {"every": 4}, "pixels_bilateral": {}}
    assert (kw["read"].start_frame, kw["read"].end_frame, kw["read"].size) == (2, 10, (64, 48))
    # the page's fields from the run's settings make the same settings (history: run again with one change)
    assert serve.build_config(serve.settings_of(config), model="toy") == config
    # a flag on the command line still wins over the preset
    args = cli._with_config(cli.build_parser(), ["edit", str(SAMPLE), "-o", "o.mp4", "--config", str(path),
                                                 "-t", "a green circle", "--steps", "7"])
    assert (args.target, args.steps) == ("a green circle", 7)


def test_edit_without_target_still_refused(capsys):
    with pytest.raises(SystemExit) as e:
        cli._with_config(cli.build_parser(), ["edit", str(SAMPLE), "-o", "o.mp4"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "videdit: error: the following arguments are required: -t/--target"


@pytest.mark.parametrize("change, message", [
    ({"options": "editor_params: {mask: /etc/passwd}"},
     "options.editor_params.mask: the page reads no server files; upload a mask in the mask field"),
    # a file option's string is refused whether or not the file exists: no answer tells which files the server has
    ({"options": "editor_params: {mask: README.md}"},
     "options.editor_params.mask: the page reads no server files; upload a mask in the mask field"),
    ({"options": "editor_params: {mask: READMEX.md}"},
     "options.editor_params.mask: the page reads no server files; upload a mask in the mask field"),
    ({"options": "temporal: {flow_propagation: {raft_weights: raft.pth}}", "temporal": ["flow_propagation"]},
     "options.temporal.flow_propagation.raft_weights: the page reads no server files"),
    ({"options": "editor_params: {mode: ~/x}"},
     "options.editor_params.mode: '~/x' looks like a path on the server; the page reads no server files"),
    ({"steps": 2.5}, "steps must be a whole number >= 0, got 2.5"),
    ({"options": "output: x.mp4"}, "options take inversion_params, editor_params, temporal; not output"),
    ({"options": "editor_params: [1"}, "options are not valid YAML: line 1, column 18: expected ',' or ']', "
                                      "but got '<stream end>' (while parsing a flow sequence started at line 1, "
                                      "column 16)"),
    ({"options": "temporal: {keyframes: {every: 2}, flow_propagation: {}}", "temporal": ["keyframes"]},
     "options give temporal flow_propagation, which is not ticked under temporal modules; tick it or remove its "
     "options"),
    ({"start_frame": 5, "end_frame": 3}, "the end frame (3) must come after the first frame (5)"),
    ({"target": " "}, "give a target prompt (what the edit should show)"),
    ({"size": "big"}, "size must be N (short side), WxH or source, got 'big'"),
    ({"guidance": "high"}, "guidance must be a number, got 'high'"),
    ({"preset": "../../etc/passwd"}, "unknown preset '../../etc/passwd'"),
])
def test_bad_settings_are_one_line(change, message):
    s = _recolour(**change)
    with pytest.raises(VideditError) as e:
        serve.build_config(s, model="toy")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_upload_checks(tmp_path):
    dest = tmp_path / "server"
    clip, info = serve.accept_upload(SAMPLE, dest / "1", serve.Limits())
    assert serve.describe_clip(info) == "video, 64x64, 8 fps, 24 frames, 3.00 s"
    assert clip.parent == dest / "1" and clip.read_bytes() == SAMPLE.read_bytes()
    fake = tmp_path / "notavideo.mp4"
    fake.write_text("this is text, not a video\n")
    cases = [(fake, serve.Limits(), "notavideo.mp4 is not a readable video ("),
             (SAMPLE, serve.Limits(max_upload_mb=0.001), "red-circle.mp4 is 0.0"),
             (SAMPLE, serve.Limits(max_seconds=2), "red-circle.mp4 lasts 3.0 s, over this server's limit of 2 s "
                                                   "(videdit serve --max-seconds)"),
             (SAMPLE, serve.Limits(max_frames=10), "red-circle.mp4 has 24 frames, over this server's limit of 10 "
                                                   "(videdit serve --max-frames)")]
    for i, (path, limits, message) in enumerate(cases, 2):
        with pytest.raises(VideditError) as e:
            serve.accept_upload(path, dest / str(i), limits)
        text = str(e.value)
        assert text.startswith(message) and "\n" not in text and str(tmp_path) not in text, text
        assert not (dest / str(i)).exists()   # nothing kept of a refused upload
    assert "over this server's upload limit of 0.001 MB (videdit serve --max-upload-mb)" in \
        _refusal(SAMPLE, dest / "x", serve.Limits(max_upload_mb=0.001))
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    assert _refusal(notes, dest / "y", serve.Limits()).startswith("notes.txt: upload a video (.mp4, ")


def _refusal(path, dest, limits) -> str:
    with pytest.raises(VideditError) as e:
        serve.accept_upload(path, dest, limits)
    return str(e.value)


def test_zip_of_frames_unpacks_by_base_name_only(tmp_path):
    frames, _ = io.read_clip(SAMPLE, io.ReadOptions(max_frames=3))
    archive = tmp_path / "frames.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i, (name, frame) in enumerate(zip(["../../evil0.png", "sub/f1.png", "/abs/f2.png"], frames)):
            png = tmp_path / f"p{i}.png"
            io.write_image(png, frame)
            z.write(png, name)
        z.writestr("readme.txt", "not a frame")
    clip, info = serve.accept_upload(archive, tmp_path / "server" / "1", serve.Limits())
    assert sorted(p.name for p in clip.iterdir()) == ["evil0.png", "f1.png", "f2.png"]
    assert info.n_frames == 3 and not (tmp_path.parent / "evil0.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.zip", "p0.png", "p1.png", "p2.png", "server"]
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("a.txt", "x")
    assert _refusal(empty, tmp_path / "s2", serve.Limits()).startswith("empty.zip holds no image frames")
    assert _refusal(archive, tmp_path / "s3", serve.Limits(max_frames=2)) == \
        "frames.zip holds 3 frames, over this server's limit of 2 (videdit serve --max-frames)"
    broken = tmp_path / "broken.zip"
    broken.write_text("PK not really")
    assert _refusal(broken, tmp_path / "s4", serve.Limits()) == "broken.zip is not a readable zip file"


def test_watch_bars_reports_and_stops_and_restores():
    from tqdm import std
    from tqdm.auto import tqdm

    original, seen = dict(vars(std.tqdm)), []

    def stop_at_5(bar):
        seen.append((bar.desc, bar.n, bar.total))
        if bar.n >= 5:
            raise serve.Cancelled("cancelled; nothing was written")

    done = []
    with pytest.raises(serve.Cancelled), serve.watch_bars(stop_at_5):
        bar = tqdm(total=10, desc="invert", leave=False)
        for _ in range(10):
            bar.update(1)
            done.append(1)
    assert len(done) == 4 and seen[0] == ("invert", 0, 10) and seen[-1] == ("invert", 5, 10)
    assert vars(std.tqdm) == original


def test_the_page_reads_every_update_of_a_bar_the_log_none(monkeypatch):
    """`videdit serve` with stderr in a file: no bar writes there, and the page's watcher still sees each update
    of each bar (as tqdm refreshes it: an outer bar at a log's 10 s pace would leave the page behind)."""
    from videdit.progress import bars_as_lines, progress_bar

    log, seen = StringIO(), []
    monkeypatch.setattr(sys, "stderr", log)
    with bars_as_lines(silent=True), serve.watch_bars(lambda bar: seen.append((bar.desc, bar.n))):
        for _ in progress_bar(range(3), desc="frames", mininterval=0):   # a refresh a step, as tqdm then does
            for _ in progress_bar(range(4), desc="denoise", leave=False, mininterval=0):
                pass
    assert [n for d, n in seen if d == "frames"] == [0, 1, 2, 3]
    assert [n for d, n in seen if d == "denoise"] == [0, 1, 2, 3, 4] * 3
    assert log.getvalue() == ""


def test_zip_upload_name_names_nothing_on_the_server(tmp_path):
    """A zip named "..zip" (its stem ".") unpacks into its upload's own folder like any other."""
    frames, _ = io.read_clip(SAMPLE, io.ReadOptions(max_frames=2))
    archive = tmp_path / "..zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i, frame in enumerate(frames):
            io.write_image(tmp_path / f"p{i}.png", frame)
            z.write(tmp_path / f"p{i}.png", f"p{i}.png")
    clip, info = serve.accept_upload(archive, tmp_path / "server" / "001", serve.Limits())
    assert clip == tmp_path / "server" / "001" / "frames" and info.n_frames == 2


def test_a_pages_cancel_stops_its_own_run_only(tiny, tmp_path):
    """Page B's cancel, while page A's run holds the server, stops B's waiting run before it starts
    and leaves A's to finish; A's own cancel stops A's. Errors name the upload, not the server's path."""
    import threading

    server = serve.Server("tiny-random", root=tmp_path / "server", cache_dir=str(tmp_path / "cache"))
    server.model = tiny
    clip, _ = server.upload(SAMPLE, "my clip.mp4")
    s = serve.PageSettings(source=RED, target=BLUE, steps=2, end_frame=4, size="64")
    started, release, answers, results = threading.Event(), threading.Event(), [], {}

    def progress_a(f, text):
        started.set()
        release.wait(30)

    def run(owner, progress):
        try:
            results.setdefault(owner, []).append(server.run(clip, s, progress, owner=owner))
        except VideditError as e:
            results.setdefault(owner, []).append(e)

    a = threading.Thread(target=run, args=("A", progress_a))
    a.start()
    assert started.wait(30)
    waited = threading.Event()
    b = threading.Thread(target=run, args=("B", lambda f, text: waited.set() if text.startswith("waiting") else None))
    b.start()
    assert waited.wait(30)
    answers += [server.cancel("B"), server.cancel("C")]
    b.join(30)
    release.set()
    a.join(60)
    assert answers == ["cancelling ...", "nothing of this page's is running"]
    assert [str(e) for e in results["B"]] == ["cancelled before it started; nothing was written"]
    assert results["A"][0].number == 1 and results["A"][0].output.exists()
    assert server.cancel("A") == "nothing is running"
    assert server.run(clip, s, owner="B").number == 2   # B's cancel ended with its run: B runs again
    real = serve.build_config

    def cancelled_while_checked(*args, **kwargs):   # a cancel as the run checks its settings, before the lock
        assert server.cancel("D") == "cancelling ..."
        return real(*args, **kwargs)

    with mock.patch.object(serve, "build_config", cancelled_while_checked):
        with pytest.raises(serve.Cancelled, match="cancelled before it started"):
            server.run(clip, s, owner="D")
    assert server.run(clip, s, owner="D").number == 3 and server.cancel("D") == "nothing is running"
    # one page's two runs (a second click while the first is on): its cancel stops both
    started.clear()
    release.clear()
    a = threading.Thread(target=run, args=("E", progress_a))
    a.start()
    assert started.wait(30)
    waited.clear()
    b = threading.Thread(target=run, args=("E", lambda f, text: waited.set() if text.startswith("waiting") else None))
    b.start()
    assert waited.wait(30) and server.cancel("E") == "cancelling ..."
    release.set()
    a.join(60)
    b.join(60)
    assert sorted(str(e) for e in results["E"]) == ["cancelled before it started; nothing was written",
                                                    "cancelled; nothing was written"]
    assert [r.number for r in server.history] == [1, 2, 3] and server.cancel("E") == "nothing is running"
    with pytest.raises(VideditError) as e:   # the clip's path on the server stays there
        server.run(clip, serve.PageSettings(source=RED, target=BLUE, steps=2, start_frame=30, size="64"))
    assert "my clip.mp4" in str(e.value) and str(server.root) not in str(e.value)
    server.close()


def test_a_pages_replaced_uploads_go_unless_a_run_read_them(tmp_path):
    """A page's new clip (or mask) replaces its previous one on the server, which goes unless a run read
    it (the history recalls a run's clip); another page's stay; a closed page's unread uploads go."""
    server = serve.Server("tiny-random", root=tmp_path / "server")
    first, _ = server.upload(SAMPLE, "a.mp4", owner="A")
    other, _ = server.upload(SAMPLE, "b.mp4", owner="B")
    second, _ = server.sample(owner="A")
    assert (first.exists(), other.exists(), second.exists()) == (False, True, True)
    with pytest.raises(VideditError, match="give a target prompt"):   # a run read it, though it was refused
        server.run(second, _recolour(target=" "), owner="A")
    server.limits = serve.Limits(max_upload_mb=1e-6)
    with pytest.raises(VideditError, match="over this server's upload limit"):   # refused: the page's field is empty
        server.upload(SAMPLE, "c.mp4", owner="A")
    server.limits = serve.Limits()
    assert second.exists()
    mask, _ = server.upload_mask(_mask_png(tmp_path / "m.png"), "m.png", owner="A")
    assert mask.path.exists()
    with pytest.raises(VideditError, match="the clip is no longer on the server; upload it again"):
        server.run(first, _recolour(), owner="A")
    server.forget("A")
    assert (second.exists(), mask.path.exists(), other.exists()) == (True, False, True)
    assert sorted(f.name for f in (server.root / "uploads").iterdir()) == ["002", "003"]   # B's, the read one
    assert sorted(server._names.values()) == ["b.mp4", "red-circle.mp4"]   # the removed ones' names go too
    server.close()


def test_runs_cache_their_inversions_in_the_servers_folder(tmp_path):
    server = serve.Server("tiny-random", root=tmp_path / "server")
    assert server.cache_dir == str(tmp_path / "server" / "cache")
    assert serve.Server("tiny-random", root=tmp_path / "s2", cache_dir="/kept").cache_dir == "/kept"


def test_page_words_name_the_pages_fields():
    text = ("over the budget of 16384; use --size 512 or less (toy's native short side is 64), or raise the budget "
            "with --max-tokens 625000000 (or $VIDEDIT_MAX_TOKENS)")
    assert serve.page_words(text) == ("over the budget of 16384; use a working size of 512 or less (toy's native "
                                      "short side is 64), or raise the budget with $VIDEDIT_MAX_TOKENS=625000000 "
                                      "where the server is started")


def test_serve_without_gradio_says_how_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)   # import gradio -> ImportError
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    assert cli.main(["serve", "--model", "toy", "--port", "1"]) == 2
    assert capsys.readouterr().err == 'videdit: error: videdit serve needs Gradio: pip install "videdit[ui]"\n'
    assert list(tmp_path.iterdir()) == []   # its temporary folder is gone


def test_no_gradio_import_outside_serve():
    import subprocess

    code = ("import sys, videdit.cli, videdit.serve; videdit.cli.build_parser(); videdit.serve.presets(); "
            "print('gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_server_cancel_leaves_nothing_and_next_run_matches(tiny, tmp_path, caplog):
    caplog.set_level("INFO", logger="videdit")
    server = serve.Server("tiny-random", root=tmp_path / "server", cache_dir=str(tmp_path / "cache"))
    server.model = tiny
    clip, text = server.sample()
    assert text == "video, 64x64, 8 fps, 24 frames, 3.00 s"
    s = serve.PageSettings(source=RED, target=BLUE, steps=2, end_frame=2, size="64")
    seen = []
    first = server.run(clip, s, lambda f, text: seen.append((f, text)))
    assert first.number == 1 and first.output.exists() and first.preset.exists() and first.preview.exists()
    frames, _ = io.read_clip(first.output)
    assert frames.shape == (2, 64, 64, 3)
    assert seen[-1] == (1.0, "scoring the warp error") and any("frames 2/2" in t for _, t in seen)
    assert set(first.report) >= {"warp_error", "source_warp_error", "warp_error_ratio", "flicker"}
    assert "inversion" in first.message and not first.from_cache

    answers = []   # cancelled as window 1 of 2 is done: window 2's bars stop it, before anything is written
    with pytest.raises(serve.Cancelled, match="cancelled; nothing was written"):
        server.run(clip, serve.PageSettings(source=RED, target=BLUE, steps=3, end_frame=20, size="64"),
                   lambda f, text: answers.append(server.cancel()) if "frames 16/20" in text else None)
    assert answers == ["cancelling ..."] and server.cancel() == "nothing is running"
    assert sorted(p.name for p in (server.root / "runs").iterdir()) == ["001"]   # nothing of the cancelled run
    assert [r.number for r in server.history] == [1]
    # cancelled while the warp error is scored (no bars there): the written output goes too
    with pytest.raises(serve.Cancelled, match="cancelled; nothing was written"):
        server.run(clip, s, lambda f, text: answers.append(server.cancel()) if text.startswith("scoring") else None)
    assert answers[-1] == "cancelling ..." and sorted(p.name for p in (server.root / "runs").iterdir()) == ["001"]
    again = server.run(clip, s, lambda f, text: None)   # same settings: the inversion from cache
    assert again.number == 2 and again.from_cache and "inversion from cache (1/1 windows)" in again.message
    # the model is as it was: the same edit as the Python API makes on it now
    from videdit.pipeline import edit_video

    reference = edit_video(clip, tmp_path / "reference.mp4", source_prompt=RED, target_prompt=BLUE, model=tiny,
                           steps=2, read=io.ReadOptions(end_frame=2, size=64), cache_dir=tmp_path / "cache").output
    np.testing.assert_array_equal(io.read_clip(again.output)[0], io.read_clip(reference)[0])
    with pytest.raises(VideditError, match="upload a clip first"):
        server.run(None, s)
    # the server's log: a line a run (its bars are the page's)
    runs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("run ")]
    assert [line.split(";")[0] for line in runs] == [
        "run 1: 2 frames, worked at 64x64, written at 64x64", "run 2 cancelled", "run 2 cancelled",
        "run 2: 2 frames, worked at 64x64, written at 64x64"]
    assert runs[0].endswith(f"warp error ratio {first.report['warp_error_ratio']:.2f}")
    server.close()
    assert not server.root.exists()


# --- the mask upload, for the editors that take one -------------------------------------------------------------

def _mask_png(path: Path, size=(32, 32)) -> Path:
    """A mask of ``size`` (w, h): its left half white (edit), its right half black (keep)."""
    import cv2

    image = np.zeros(size[::-1], np.uint8)
    image[:, : size[0] // 2] = 255
    cv2.imwrite(str(path), image)
    return path


def test_mask_upload_shown_for_the_editors_the_cli_mask_reaches():
    args = cli._with_config(cli.build_parser(), ["edit", str(SAMPLE), "-o", "o.mp4", "-t", BLUE, "--mask", "m.png"])
    with pytest.raises(VideditError) as e:
        cli.editor_params(args)   # editor plain: the CLI names the editors that take --mask
    takers = str(e.value).split("one of ")[1]
    assert takers == str(serve.mask_editors())
    assert serve.mask_editors() == ["blended", "diffedit", "differential", "ledits", "masactrl", "sega"]
    with pytest.raises(VideditError) as e:   # a mask kept from an earlier editor goes to none that takes none
        serve.build_config(_recolour(), model="toy", mask="m.png")
    assert str(e.value) == ("editor 'prompt_to_prompt' takes no mask; remove the mask or choose one of blended, "
                            "diffedit, differential, ledits, masactrl, sega")


def test_mask_upload_checks(tmp_path):
    limits, dest = serve.Limits(), tmp_path / "server"
    mask, size, text = serve.accept_mask(_mask_png(tmp_path / "m.png", (32, 16)), dest / "1", limits, "hand.png")
    assert (mask.name, size, text) == ("mask.png", (32, 16), "mask 32x16, 50% to edit")
    np.save(tmp_path / "m.npy", np.full((1, 8, 8), 0.25, np.float32))
    assert serve.accept_mask(tmp_path / "m.npy", dest / "2", limits)[1:] == ((8, 8), "mask 8x8, 0% to edit")
    np.save(tmp_path / "frames.npy", np.zeros((3, 8, 8), np.float32))
    np.save(tmp_path / "over.npy", np.full((8, 8), 2.0, np.float32))
    (tmp_path / "text.png").write_text("not an image\n")
    (tmp_path / "big.png").write_bytes(b"\0" * 3000)
    cases = [(SAMPLE, limits, "red-circle.mp4: a mask is one image (.png, .jpg, .jpeg, .bmp, .webp, .tif, .tiff) "
                              "or a .npy map for every frame (as videdit edit --mask takes), white = edit"),
             (tmp_path / "frames.npy", limits, "frames.npy is an array of shape (3, 8, 8); give one mask (h, w) for "
                                               "every frame (as videdit edit --mask takes)"),
             (tmp_path / "over.npy", limits, "over.npy holds values in [2, 2]; a mask holds values in [0, 1] "
                                             "(1 = edit, 0 = keep)"),
             (tmp_path / "text.png", limits, "text.png is not a readable image"),
             (tmp_path / "big.png", serve.Limits(max_upload_mb=0.001),
              "big.png is 0.0 MB, over this server's upload limit of 0.001 MB (videdit serve --max-upload-mb)")]
    for i, (path, lim, message) in enumerate(cases, 3):
        with pytest.raises(VideditError) as e:
            serve.accept_mask(path, dest / str(i), lim)
        assert str(e.value) == message
        assert not (dest / str(i)).exists()
    serve.check_mask_fits((32, 16), (64, 32), "hand.png")   # any size with the frames' aspect ratio
    with pytest.raises(VideditError) as e:
        serve.check_mask_fits((32, 16), (64, 64), "hand.png")
    assert str(e.value) == ("the mask hand.png is 32x16 but the frames are 64x64: give a mask with the frames' "
                            "aspect ratio (any size), or a working size WxH of the mask's")


def test_mask_run_passes_what_videdit_edit_mask_passes(tmp_path, monkeypatch):
    """The page's run gets the arguments `videdit edit --config run1.yaml` parses in the folder of the
    run's downloads (its mask beside the preset), and those of `--mask PATH` given to the CLI."""
    from videdit import pipeline

    server = serve.Server("toy", root=tmp_path / "server")
    server.model = "the loaded model"
    clip, _ = server.sample()
    given, text = server.upload_mask(_mask_png(tmp_path / "m.png"), "hand.png")
    assert text == "mask 32x32, 50% to edit"
    seen = {}

    def edit_video(input, output, **kwargs):   # the run's call; the CLI's, while the run's folder is there
        folder = Path(output).parent
        seen.update(run=kwargs, files=sorted(p.name for p in folder.iterdir()), yaml=(folder / "run1.yaml").read_text())
        flags = ["-o", str(output), "--preview", str(folder / "run1-compare.gif"), "-q"]
        monkeypatch.chdir(folder)   # where the downloads are
        seen["config"] = cli.edit_kwargs(cli._with_config(cli.build_parser(), ["edit", str(input), *flags,
                                                                                "--config", "run1.yaml"]))
        monkeypatch.chdir(tmp_path)
        seen["flag"] = cli.edit_kwargs(cli._with_config(cli.build_parser(), [
            "edit", str(input), *flags, "--config", str(folder / "run1.yaml"),
            "--mask", str(folder / "run1-mask.png")]))
        raise VideditError("stopped by the test")

    monkeypatch.setattr(pipeline, "edit_video", edit_video)
    s = serve.preset_settings("blended", serve.PageSettings(source=RED, target=BLUE))
    s.steps = 2
    with pytest.raises(VideditError, match="stopped by the test"):
        server.run(clip, s, mask=given)
    assert seen["files"] == ["run1-mask.png", "run1.yaml"]
    assert "# in the folder that holds this file and the mask run1-mask.png" in seen["yaml"]
    assert yaml.safe_load(seen["yaml"])["mask"] == "run1-mask.png"
    run = seen["run"]
    assert run["editor"] == "blended" and run["editor_params"]["mask"] == str(server.root / "runs/001/run1-mask.png")
    assert (run["model"], run["progress"], run["cache_dir"]) == ("the loaded model", True,
                                                                 str(server.root / "cache"))
    for key in ("model", "progress", "cache_dir"):   # the server's own (the CLI's default: the user's cache)
        del run[key], seen["flag"][key], seen["config"][key]
    assert run == seen["flag"]                                          # = videdit edit ... --mask PATH
    assert seen["config"]["editor_params"]["mask"] == "run1-mask.png"   # read from the downloads' folder
    seen["config"]["editor_params"]["mask"] = run["editor_params"]["mask"]
    assert run == seen["config"]
    assert not (server.root / "runs" / "001").exists()   # a failed run leaves nothing
    # the frames' aspect ratio, checked before the run, in a line naming the upload
    wide, _ = server.upload_mask(_mask_png(tmp_path / "w.png", (32, 16)), "wide.png")
    with pytest.raises(VideditError) as e:
        server.run(clip, s, mask=wide)
    assert str(e.value).startswith("the mask wide.png is 32x16 but the frames are 64x64")
    s.size = "64x32"   # a working size of the mask's aspect ratio: accepted (and stopped by the test)
    with pytest.raises(VideditError, match="stopped by the test"):
        server.run(clip, s, mask=wide)


def test_history_recall_runs_again_with_one_change(tiny, tmp_path):
    """The history's "load its settings": run 1's clip, fields and mask; its target changed, run 2
    differs from run 1, takes run 1's inversion from the cache, and keeps every other setting."""
    server = serve.Server("tiny-random", root=tmp_path / "server", cache_dir=str(tmp_path / "cache"))
    server.model = tiny
    clip, _ = server.sample()
    given, _ = server.upload_mask(_mask_png(tmp_path / "m.png"), "hand.png")
    s = serve.preset_settings("blended", serve.PageSettings(source=RED, target=BLUE, end_frame=2, size="64"))
    s.steps, s.options = 4, "editor_params: {from_inversion: true, blend_until: 1.0}"
    assert s.extra == {"strength": 0.76, "steps_offset": 0}   # the preset's keys no field shows
    first = server.run(clip, s, mask=given)
    assert [p.name for p in first.downloads()] == ["run1.mp4", "run1.yaml", "run1-mask.png"]
    assert not first.from_cache
    with pytest.raises(VideditError, match=r"no run 7 on this server \(runs: 1\)"):
        server.recall(7)
    again_clip, again, mask = server.recall(1)
    assert again_clip == clip and mask == first.mask and mask.name == "hand.png"
    assert again.preset == serve.NO_PRESET and again.extra == {"strength": 0.76, "steps_offset": 0}
    assert serve.build_config(again, model="tiny-random", mask="run1-mask.png") == first.config
    again.target = "a green circle on a gray background"
    second = server.run(again_clip, again, mask=mask)
    assert second.from_cache and "inversion from cache (1/1 windows)" in second.message, second.message
    assert {k: v for k, v in second.config.items() if k not in ("target", "mask")} == \
        {k: v for k, v in first.config.items() if k not in ("target", "mask")}
    assert (second.config["mask"], (second.preset.parent / "run2-mask.png").read_bytes()) == \
        ("run2-mask.png", first.mask.path.read_bytes())
    a, b = io.read_clip(first.output)[0].astype(int), io.read_clip(second.output)[0].astype(int)
    assert a.shape == b.shape == (2, 64, 64, 3) and np.abs(a - b).mean() > 1   # another target, another edit
    # blended keeps the source outside the mask (its right half): the two edits differ less there
    assert np.abs(a - b)[:, :, 40:].mean() < np.abs(a - b)[:, :, :24].mean()
    server.close()


def test_done_fraction_moves_through_a_windows_stages():
    """24 frames in windows of 16: the first window inverted half-way is 8 of the 24 frames' work."""
    assert serve.done_fraction({"frames": (0, 24), "invert": (75, 150)}, 16) == pytest.approx(8 / 24)
    assert serve.done_fraction({"frames": (0, 24), "invert": (150, 150), "denoise": (2, 4)}, 16) == \
        pytest.approx(0.75 * 16 / 24)
    assert serve.done_fraction({"frames": (16, 24), "invert": (0, 150)}, 16) == pytest.approx(16 / 24)
    assert serve.done_fraction({"frames": (24, 24)}, 16) == 1.0 and serve.done_fraction({}, 16) == 0.0
    assert serve.done_fraction({"frames": (24, 24), "second pass": (1, 3)}, 16) == 0.99   # not done before it ends


def test_first_sentence_cuts_at_a_clause_end_only():
    assert serve.first_sentence("Edits colours, e.g. red to blue. More.") == "Edits colours, e.g. red to blue."
    assert serve.first_sentence("1) invert. 2) edit.") == "1) invert."
    assert serve.first_sentence("x: Plain (a: b). Then") == "x"   # a leading "NAME:" goes only when named
    assert serve.first_sentence("x: Plain (a: b). Then", "x") == "Plain (a: b)."
    assert serve.first_sentence("no end") == "no end"
