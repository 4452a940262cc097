"""videdit batch, run here: 6 jobs over 3 real clips x 2 prompts on tiny-random (64 px, 2 steps, 4 frames)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from videdit.batch import JobRunner, edit_batch, expand_jobs, read_job_file
from videdit.cli import main
from videdit.errors import VideditError

ROOT = Path(__file__).resolve().parents[1]
RAY_BEFORE = "ray" in sys.modules   # another test module's import of it, where one ran first
CLIPS = {"wolf": "a wolf", "dog": "a dog walking", "truck": "a truck"}
SETTINGS = {"model": "tiny-random", "steps": 2, "size": 64, "max_frames": 4, "device": "cpu"}


def job_file(tmp: Path, shared: Path, out: str = "out", clips=tuple(CLIPS), **extra) -> Path:
    """2 jobs a clip (6 for all three): targets [its source + ' at night', + ' in snow'], outputs
    out/{input}-{n}.mp4."""
    (tmp / out).mkdir(exist_ok=True)
    defaults = {**SETTINGS, "output": f"{out}/{{input}}-{{n}}.mp4", **extra}
    jobs = [{"input": str(shared / "videos" / f"{clip}.mp4"), "source": source,
             "targets": [f"{source} at night", f"{source} in snow"]} for clip, source in CLIPS.items() if clip in clips]
    path = tmp / "jobs.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"defaults": defaults, "jobs": jobs}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    """One worker for the module: its model stays loaded across the tests' batches."""
    return JobRunner(tmp_path_factory.mktemp("cache"))


def test_job_file_formats_expand_to_the_same_jobs(tmp_path, shared_data):
    yaml_jobs = expand_jobs(*reversed(read_job_file(job_file(tmp_path, shared_data))), base=tmp_path)
    lines = [{"defaults": {**SETTINGS, "output": "out/{input}-{n}.mp4"}}] + [
        {"input": str(shared_data / "videos" / f"{c}.mp4"), "source": s, "target": f"{s} {w}"}
        for c, s in CLIPS.items() for w in ("at night", "in snow")]
    (tmp_path / "jobs.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    header = "input,output,source,target,model,steps,size,max_frames,device\n"
    rows = [f"{d['input']},out/{Path(d['input']).stem}-{n % 2}.mp4,{d['source']},{d['target']},tiny-random,2,64,4,cpu"
            for n, d in enumerate(lines[1:])]
    (tmp_path / "jobs.csv").write_text(header + "\n".join(rows) + "\n")
    # the JSON Lines entries have one target each: their outputs' {n} is 0, so give each its own name
    d, e = read_job_file(tmp_path / "jobs.jsonl")
    for n, entry in enumerate(e):
        entry["output"] = f"out/{Path(entry['input']).stem}-{n % 2}.mp4"
    jsonl_jobs = expand_jobs(e, d, base=tmp_path)
    csv_jobs = expand_jobs(*reversed(read_job_file(tmp_path / "jobs.csv")), base=tmp_path)
    key = lambda jobs: [(j.input, j.output, dict(j.options)) for j in jobs]  # noqa: E731
    assert len(yaml_jobs) == 6 and key(yaml_jobs) == key(jsonl_jobs) == key(csv_jobs)
    assert [Path(j.output).name for j in yaml_jobs] == ["wolf-0.mp4", "wolf-1.mp4", "dog-0.mp4", "dog-1.mp4",
                                                        "truck-0.mp4", "truck-1.mp4"]
    assert yaml_jobs[3].options["target_prompt"] == "a dog walking in snow"


def test_bad_job_files_are_one_line_before_any_work(tmp_path, shared_data):
    clip = str(shared_data / "videos" / "dog.mp4")
    cases = [([{"input": clip, "output": "a.mp4", "target": "x", "stepz": 2}],
              r"unknown option 'stepz' \(did you mean 'steps'\?\); a job takes .*, deepcache, .*, negative, .*, "
              r"source, .*, target, .*, tome, .*, window$"),
             ([{"input": clip, "output": "a.mp4", "target": "x", "preview": "a.mp4"}],
              "preview 'a.mp4' must be a .gif beside the output, not the output itself"),
             ([{"input": clip, "output": "a.mp4", "target": "x", "preview": "p.png"}],
              "preview 'p.png' must be a .gif beside the output, not another kind of file"),
             ([{"input": clip, "output": "a.mp4", "target": "x", "config": "tokenflw"}],
              "no config file tokenflw and no preset of that name \\(did you mean 'tokenflow'\\?\\)"),
             ([{"input": clip, "output": "a.mp4", "targets": ["x", "y"]}], "both write"),
             ([{"input": clip, "output": "a.mp4", "target": "x", "editor": "magic"}], "unknown editor 'magic'"),
             ([{"input": clip, "output": "a.mp4"}], "no target prompt"),
             ([{"input": clip, "output": "a.mp4", "target": "x", "size": "big"}], "size must be N"),
             ([{"input": clip, "output": "a.mp4", "target": "x", "compile": "no"}],
              "compile is true, false or one of default, .*reduce-overhead"),
             ([{"input": clip, "output": "a.mp4", "target": "x", "vae_tiling": "no"}], "vae_tiling is true or false"),
             # values of the wrong type say the form they need, not Python's comparison errors
             ([{"input": clip, "output": "a.mp4", "target": "x", "steps": "many"}],
              "steps must be a whole number, got 'many'$"),
             ([{"input": clip, "output": "a.mp4", "target": "x", "steps": 4.5}],
              "steps must be a whole number, got 4.5$"),
             ([{"input": clip, "output": "a.mp4", "target": "x", "guidance": "high"}],
              "guidance must be a number, got 'high'$"),
             ([{"input": clip, "output": "a.mp4", "target": "x", "temporal": "keyframes"}],
              r"temporal must be a mapping of module: options, e.g. \{keyframes: \{every: 2\}\}; got 'keyframes'$"),
             ([{"input": clip, "output": "a.mp4", "target": "x", "editor_params": "mode=replace"}],
              r"editor_params must be a mapping of option: value, e.g. \{mode: replace\}; got 'mode=replace'$")]
    for entries, message in cases:
        with pytest.raises(VideditError, match=message) as e:
            expand_jobs(entries, base=tmp_path)
        assert "\n" not in str(e.value) and str(e.value).startswith(("entry 1: ", "entry 1 (", "jobs 1 and 2 both"))


def test_a_file_that_is_no_job_file_is_one_line(tmp_path):
    """A clip given for the job file, and a CSV row with more cells than its header, are refused in one
    line naming the file (and the row's line)."""
    with pytest.raises(VideditError) as e:
        read_job_file(ROOT / "samples" / "red-circle.mp4")
    assert str(e.value).endswith("red-circle.mp4 is not a job file (not text); give a .yaml, .jsonl or .csv of jobs")
    (tmp_path / "jobs.csv").write_text("input,output,target\na.mp4,o.mp4,x\nb.mp4,p.mp4,y,extra\n")
    with pytest.raises(VideditError) as e:
        read_job_file(tmp_path / "jobs.csv")
    assert str(e.value) == f"{tmp_path / 'jobs.csv'}, line 3: 4 cells, more than the header's 3 columns"


def test_a_preset_is_under_the_defaults_and_the_entry(tmp_path, shared_data):
    """`config:` (in the defaults or an entry) gives what neither sets: tokenflow-plus's editor and temporal
    modules, not its steps (50) or model (SD 2.1) where the defaults give them."""
    clip = str(shared_data / "videos" / "dog.mp4")
    defaults = {"model": "toy", "steps": 2, "config": "tokenflow-plus", "output": "{input}-{target}.mp4"}
    jobs = expand_jobs([{"input": clip, "target": "x"}, {"input": clip, "targets": ["y", "z"], "steps": 3,
                                                         "config": "tokenflow"}], defaults, base=tmp_path)
    assert [(j.options["model"], j.options["steps"]) for j in jobs] == [("toy", 2), ("toy", 3), ("toy", 3)]
    assert jobs[0].options["editor"] == jobs[1].options["editor"] == "plug_and_play"
    assert set(jobs[0].options["temporal"]) == {"keyframes", "tokenflow"} and set(jobs[1].options["temporal"]) == {
        "tokenflow"}
    # `batch --model` fills in where the file names none: under a preset that names one
    (preset,), (plain,) = (expand_jobs([{"input": clip, "target": "x", "output": "o.mp4", **extra}], {}, base=tmp_path,
                                       fallback={"model": "toy"}) for extra in ({"config": "tokenflow"}, {}))
    assert preset.options["model"] == "stabilityai/stable-diffusion-2-1-base" and plain.options["model"] == "toy"


def test_speed_options_leave_the_record_and_the_inversion_group_alone(tmp_path, shared_data):
    """compile and channels_last change how a job runs, not what it makes (float rounding): the same
    record digest and inversion group; vae_dtype changes the latents: another of each."""
    clip = str(shared_data / "videos" / "dog.mp4")
    base = {"input": clip, "output": "a.mp4", "target": "x"}
    (plain,), (fast,), (bf16,) = (expand_jobs([job], base=tmp_path) for job in (
        base, {**base, "compile": "reduce-overhead", "channels_last": True}, {**base, "vae_dtype": "bf16"}))
    assert fast.digest("d") == plain.digest("d") and fast.inversion_group() == plain.inversion_group()
    assert bf16.digest("d") != plain.digest("d") and bf16.inversion_group() != plain.inversion_group()


def test_batch_shares_inversions_resumes_and_redoes_a_changed_job(tmp_path, shared_data, runner, capsys):
    jobs = job_file(tmp_path, shared_data)
    first = edit_batch(jobs, runner=runner, cache_dir=runner.cache_dir, report=tmp_path / "report.json")
    assert [r.status for r in first.jobs] == ["done"] * 6 and first.ok
    assert [(r.inversions_computed, r.inversions_cached) for r in first.jobs] == [(1, 0), (0, 1)] * 3
    assert "3 computed, 3 from cache" in first.summary() and first.model_loads <= 1
    assert all(r.frames == 4 and 0 < r.warp_error < 255 for r in first.jobs)
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["succeeded"], report["skipped"], report["failed"]) == (6, 0, 0)
    assert [j["output"] for j in report["jobs"]] == [r.output for r in first.jobs]
    outputs = {r.output: Path(r.output).read_bytes() for r in first.jobs}
    assert RAY_BEFORE or "ray" not in sys.modules   # nothing of Ray without ray=

    again = edit_batch(jobs, runner=runner, cache_dir=runner.cache_dir)
    assert [r.status for r in again.jobs] == ["skipped"] * 6
    assert [r.warp_error for r in again.jobs] == [r.warp_error for r in first.jobs]   # from the records

    text = jobs.read_text().replace("a truck in snow", "a truck in fog")   # one prompt changed: one job redone
    jobs.write_text(text)
    changed = edit_batch(jobs, runner=runner, cache_dir=runner.cache_dir)
    assert [r.status for r in changed.jobs] == ["skipped"] * 5 + ["done"]
    assert (changed.jobs[5].inversions_computed, changed.jobs[5].inversions_cached) == (0, 1)
    assert {r.output: Path(r.output).read_bytes() == outputs[r.output] for r in changed.jobs} == {
        r.output: r.index != 5 for r in changed.jobs}


def test_a_corrupt_input_fails_alone_with_its_line_and_the_exit_code_says(tmp_path, shared_data, runner, capsys):
    """One job of six on a corrupt (truncated) clip: it fails with its one-line error, the other
    five succeed, and `videdit batch` exits 1 with the counts in its summary."""
    import yaml

    bad = tmp_path / "broken.mp4"
    bad.write_bytes((shared_data / "videos" / "dog.mp4").read_bytes()[:2000])
    entries = [{"input": str(shared_data / "videos" / f"{c}.mp4"), "source": s,
                "targets": [f"{s} at night", f"{s} in snow"]} for c, s in CLIPS.items()]
    entries[1]["targets"] = ["a dog walking at night"]
    entries.insert(2, {"input": str(bad), "target": "a dog walking in snow"})
    (tmp_path / "out").mkdir()
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(yaml.safe_dump({"defaults": {**SETTINGS, "output": "out/{input}-{n}.mp4"}, "jobs": entries}))
    code = main(["batch", str(jobs), "--cache-dir", str(runner.cache_dir), "-q"])
    out, _ = capsys.readouterr()
    assert code == 1
    report = json.loads((tmp_path / "jobs.report.json").read_text())
    assert (report["succeeded"], report["skipped"], report["failed"]) == (5, 0, 1)
    [failed] = [j for j in report["jobs"] if j["status"] == "failed"]
    assert failed["index"] == 3 and failed["error"].startswith(f"{bad} is not a readable video")
    assert "\n" not in failed["error"] and f"broken-0.mp4: {failed['error']}" in out
    assert "6 jobs: 5 succeeded, 0 skipped, 1 failed" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == [
        "dog-0.mp4", "truck-0.mp4", "truck-1.mp4", "wolf-0.mp4", "wolf-1.mp4"]


def _subprocess_batch(jobs: Path, cache: Path, *extra) -> subprocess.Popen:
    """``videdit batch`` in a process of its own, Ctrl-C (SIGINT) handled as in a terminal: a test run
    started in the background of a shell without job control inherits SIGINT ignored, and Python
    then leaves it ignored (the batch would finish with exit 0)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "videdit.cli", "batch", str(jobs), "--cache-dir", str(cache), "-q",
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "the batch never got there"
        time.sleep(0.005)


@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGKILL, marks=pytest.mark.slow)],
                         ids=["SIGINT", "SIGKILL"])   # SIGKILL with -m slow: the suite was at its 10-minute bound
def test_a_killed_batch_leaves_no_partial_output_and_its_rerun_finishes(sig, tmp_path, shared_data, runner):
    """Killed after its first job, while a later one runs (6 frames in windows of 2; the signal lands
    while an output streams where the poll sees its temporary): every output there is whole, all but
    at most the last with its record (killed between the two), none other is there (SIGKILL may leave
    a hidden temporary, which the rerun removes), and the rerun skips the recorded jobs and does the rest."""
    from videdit import io

    jobs = job_file(tmp_path, shared_data, max_frames=6, window=2)   # 6 jobs: 5 left after the first (> 1 s)
    out = tmp_path / "out"
    proc = _subprocess_batch(jobs, tmp_path / "cache")
    _wait_for(lambda: (out / ".wolf-0.mp4.videdit-job.json").exists(), proc)
    end = time.monotonic() + 1
    while time.monotonic() < end and not any(p.suffix == ".mp4" and ".videdit-tmp-" in p.name for p in out.iterdir()):
        time.sleep(0.002)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    names = sorted(p.name for p in out.iterdir())
    order = ["wolf-0.mp4", "wolf-1.mp4", "dog-0.mp4", "dog-1.mp4", "truck-0.mp4", "truck-1.mp4"]   # the jobs'
    visible = sorted((n for n in names if not n.startswith(".")), key=order.index)
    assert 1 <= len(visible) < 6 and visible == order[:len(visible)]
    for name in visible:   # whole (one killed between its output and its record is redone)
        assert io.probe(out / name, io.ReadOptions()).n_frames == 6
    recorded = [n for n in visible if f".{n}.videdit-job.json" in names]
    assert recorded == visible[:len(recorded)] and len(visible) - len(recorded) <= 1
    temporaries = [n for n in names if ".videdit-tmp-" in n]
    assert len(temporaries) <= (0 if sig == signal.SIGINT else 1), names
    if sig == signal.SIGINT:
        assert "interrupted" in err

    rerun = edit_batch(jobs, runner=runner)
    assert [r.status for r in rerun.jobs] == ["skipped"] * len(recorded) + ["done"] * (6 - len(recorded))
    assert all(r.frames == 6 for r in rerun.jobs)
    assert not [p for p in out.iterdir() if ".videdit-tmp-" in p.name]


def test_a_job_that_reads_only_the_source_holds_no_inversion_group(tmp_path, shared_data):
    """Blended diffusion with a mask after DDIM inverts nothing: it is a group of its own, so the jobs
    that share the DDIM inversion wait for one that fills the cache; without the mask it joins them."""
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(mask)
    base = {"input": str(shared_data / "videos" / "dog.mp4"), "target": "x", "inversion": "ddim"}
    masked = {"editor": "blended", "editor_params": {"mask": str(mask)}}
    jobs = expand_jobs([{**base, "output": "a.mp4", **masked}, {**base, "output": "b.mp4", **masked},
                        {**base, "output": "c.mp4", "editor": "blended"}, {**base, "output": "d.mp4"}], base=tmp_path)
    groups = [j.inversion_group() for j in jobs]
    assert len(set(groups)) == 3 and groups[2] == groups[3] and "reads only the source" in groups[0]


def test_the_shipped_sample_job_file_expands_to_two_jobs_of_one_clip():
    jobs = expand_jobs(*reversed(read_job_file(ROOT / "samples" / "batch.yaml")), base=ROOT / "samples")
    assert [Path(j.output).relative_to(ROOT) for j in jobs] == [
        Path("samples/batch-out/red-circle-a-blue-circle-on-a-gray-background.mp4"),
        Path("samples/batch-out/red-circle-a-green-circle-on-a-gray-background.mp4")]
    assert {j.options["model"] for j in jobs} == {"toy"} and len({j.inversion_group() for j in jobs}) == 1
    assert jobs[0].options["editor_params"] == {"mode": "replace"} and jobs[1].options["steps"] == 25


def test_edit_batch_is_the_package_api():
    import videdit
    import videdit.batch

    assert videdit.edit_batch is videdit.batch.edit_batch


def test_workers_without_ray_is_one_line(capsys):
    assert main(["batch", str(ROOT / "samples" / "batch.yaml"), "--workers", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "videdit: error: --workers sets Ray's workers; add --ray (a local cluster) or --ray ADDRESS")


def test_the_display_counts_jobs_and_the_running_jobs_frames(tmp_path, shared_data, runner):
    """One display on a captured stream: the job counter reaches 2/2, each job's frame counter
    reaches 4/4 (windows of 2); a split job (split: 2, keyframes:pixels=bilateral) shows its
    first pass and both groups' frames, and one whose module carries state from window to
    window (cross_frame) runs whole, its note in the display and its record."""
    import io as _io

    clip = str(shared_data / "videos" / "dog.mp4")
    base = {**SETTINGS, "input": clip, "source": "a dog", "window": 2}
    jobs = [{**base, "target": "a fox", "output": str(tmp_path / "b"), "name": "b", "split": 2,
             "temporal": {"keyframes": {"pixels": "bilateral"}}},
            {**base, "target": "a cow", "output": str(tmp_path / "c.mp4"), "name": "c", "split": 2,
             "temporal": {"cross_frame": {}}}]
    stream = _io.StringIO()
    result = edit_batch(jobs, runner=runner, progress=True, progress_file=stream, scores=False)
    assert [r.status for r in result.jobs] == ["done"] * 2, [r.error for r in result.jobs]
    text = stream.getvalue()
    assert "| 2/2 [" in text and "| 0/2 [" in text
    for name in "bc":
        assert f"running {name}@local edit 2/4 frames" in text and f"running {name}@local edit 4/4 frames" in text
    assert "b@local second pass 2/2 frames" in text and "b@local second pass 4/4" not in text
    note = "split 2: temporal module 'cross_frame' carries state from window to window; the clip runs on one worker"
    assert result.jobs[1].note == note and f"videdit: job 2 (c): {note}" in text
    assert result.jobs[0].note is None and result.jobs[0].frames == 4


def test_controlnet_options_in_job_files_and_presets(tmp_path, shared_data, runner):
    """control/controlnet as `videdit edit` takes them (one value or lists, paired by position), or
    from a preset; a condition file's path is taken from the job file's folder; the tiny ControlNet
    changes the output against the same job without it; unpaired ones are one line."""
    import numpy as np
    import yaml

    from videdit import io

    clip = str(shared_data / "videos" / "dog.mp4")
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump({"control": ["canny"], "controlnet": ["tiny-random=0.5"]}))
    entries = [{"input": clip, "target": "a cat", "output": "plain.mp4"},
               {"input": clip, "target": "a cat", "output": "canny.mp4", "control": "canny",
                "controlnet": "tiny-random"},
               {"input": clip, "target": "a cat", "output": "preset.mp4", "config": "preset.yaml"},
               {"input": clip, "target": "a cat", "output": "depth.mp4", "control": ["depth=maps/d.png"],
                "controlnet": ["tiny-random"]}]
    jobs = expand_jobs(entries, SETTINGS, base=tmp_path)
    assert "control" not in jobs[0].options
    assert jobs[1].options["control"] == [{"condition": "canny", "controlnet": "tiny-random", "scale": 1.0,
                                           "start": 0.0, "end": 1.0}]
    assert jobs[2].options["control"][0]["scale"] == 0.5
    assert jobs[3].options["control"][0]["condition"] == f"depth={tmp_path / 'maps' / 'd.png'}"
    with pytest.raises(VideditError, match="entry 1: .*1 --control and 0 --controlnet"):
        expand_jobs([{**entries[0], "control": "canny"}], SETTINGS, base=tmp_path)
    result = edit_batch(jobs[:2], runner=runner, scores=False)
    assert [r.status for r in result.jobs] == ["done"] * 2, [r.error for r in result.jobs]
    plain, _ = io.read_clip(tmp_path / "plain.mp4")
    canny, _ = io.read_clip(tmp_path / "canny.mp4")
    assert plain.shape == canny.shape and np.abs(plain.astype(int) - canny).mean() > 1


def test_weights_changed_in_place_redo_the_job(tmp_path, shared_data, runner):
    """A local model folder (tiny-random saved): the rerun skips its job; after one weight file is
    rewritten in place (one tensor changed, same size) the job is redone with the new weights (the
    worker loads the model again); a hub id's stamp is the revision its cache resolves to."""
    from safetensors.torch import load_file, save_file

    from videdit.batch import weights_digest
    from videdit.models.tiny import save_tiny_random

    model = save_tiny_random(tmp_path / "model")
    job = [{**SETTINGS, "model": str(model), "input": str(shared_data / "videos" / "dog.mp4"), "target": "a cat",
            "output": str(tmp_path / "out.mp4")}]
    first = edit_batch(job, runner=runner, scores=False)
    assert [r.status for r in first.jobs] == ["done"]
    before = (tmp_path / "out.mp4").read_bytes()
    assert [r.status for r in edit_batch(job, runner=runner, scores=False).jobs] == ["skipped"]
    [weights] = sorted((model / "unet").glob("*.safetensors"))
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, weights)
    again = edit_batch(job, runner=runner, scores=False)
    assert [r.status for r in again.jobs] == ["done"] and again.jobs[0].hash != first.jobs[0].hash
    assert (tmp_path / "out.mp4").read_bytes() != before   # the new weights, loaded again (not the kept model)
    assert weights_digest({"model": "owner/name"}) == weights_digest({"model": "owner/name"}) != weights_digest(
        {"model": "owner/other"})


def test_job_files_keep_their_paths_prompts_and_files_as_written(tmp_path, shared_data):
    """Weights beside the job file are found from any folder; CSV prompts stay text; a mask's bytes
    and a missing preview rerun a job; an empty targets list, a stride of 0 and two jobs writing one
    preview are refused in one line."""
    from videdit.batch import finished_record

    folder = tmp_path / "jobs"
    folder.mkdir()
    (folder / "style.safetensors").write_bytes(b"")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(folder / "m.png")
    clip = str(shared_data / "videos" / "dog.mp4")
    base = {"input": clip, "target": "x", "output": "o.mp4"}
    (job,) = expand_jobs([{**base, "lora": ["style.safetensors=0.5"], "vae": "missing-vae", "editor": "blended",
                           "editor_params": {"mask": "m.png"}}], base=folder)
    assert job.options["lora"] == [f"{folder / 'style.safetensors'}=0.5"] and job.options["vae"] == "missing-vae"
    assert job.options["editor_params"]["mask"] == str(folder / "m.png")
    before = job.digest("d")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "m.png")
    assert job.digest("d") != before

    (folder / "jobs.csv").write_text(f"input,target,steps\n{clip},yes,2\n{clip},a circle: watercolor style,3\n")
    defaults, entries = read_job_file(folder / "jobs.csv")
    assert [(e["target"], e["steps"]) for e in entries] == [("yes", 2), ("a circle: watercolor style", 3)]

    with pytest.raises(VideditError, match=r"^entry 1: targets is empty; give it at least one target prompt$"):
        expand_jobs([{"input": clip, "output": "o.mp4", "targets": []}], base=folder)
    with pytest.raises(VideditError, match=r"^entry 1 \(.*dog.mp4\): stride must be"):
        expand_jobs([{**base, "stride": 0}], base=folder)
    with pytest.raises(VideditError, match=r"^jobs 1 and 2 both write .*p.gif; name \{n\} or \{target\}"):
        expand_jobs([{**base, "output": "{n}.mp4", "preview": "p.gif", "targets": ["a", "b"]}], base=folder)

    (job,) = expand_jobs([{**base, "preview": "p.gif"}], base=folder)
    Path(job.output).write_bytes(b"x")
    job.record_path.write_text(json.dumps({"hash": job.digest("d")}))
    assert finished_record(job, "d") is None   # its preview is missing
    Path(job.preview).write_bytes(b"x")
    assert finished_record(job, "d") is not None
