"""videdit batch, run here: 6 jobs over 3 real clips x 2 prompts on tiny-random (64 px, 2 steps, 4 frames)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    cases = [([{"input": clip, "output": "a.mp4", "target": "x", "stepz": 2}], "unknown option 'stepz'"),
             ([{"input": clip, "output": "a.mp4", "targets": ["x", "y"]}], "both write"),
             ([{"input": clip, "output": "a.mp4", "target": "x", "editor": "magic"}], "unknown editor 'magic'"),
             ([{"input": clip, "output": "a.mp4"}], "no target prompt"),
             ([{"input": clip, "output": "a.mp4", "target": "x", "size": "big"}], "size must be N")]
    for entries, message in cases:
        with pytest.raises(VideditError, match=message) as e:
            expand_jobs(entries, base=tmp_path)
        assert "\n" not in str(e.value) and str(e.value).startswith("job")


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
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "videdit.cli", "batch", str(jobs), "--cache-dir", str(cache), "-q",
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "the batch never got there"
        time.sleep(0.005)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_killed_batch_leaves_no_partial_output_and_its_rerun_finishes(sig, tmp_path, shared_data, runner):
    """Killed after its first job, while a later one runs (6 frames in windows of 2; the signal lands
    while an output streams where the poll sees its temporary): every output there is whole, all but
    at most the last with its record (killed between the two), none other is there (SIGKILL may leave
    a hidden temporary, which the rerun removes), and the rerun skips the recorded jobs and does the rest."""
    from videdit import io

    jobs = job_file(tmp_path, shared_data, clips=("wolf", "dog"), max_frames=6, window=2)
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
    order = ["wolf-0.mp4", "wolf-1.mp4", "dog-0.mp4", "dog-1.mp4"]   # the jobs'
    visible = sorted((n for n in names if not n.startswith(".")), key=order.index)
    assert 1 <= len(visible) < 4 and visible == order[:len(visible)]
    for name in visible:   # whole (one killed between its output and its record is redone)
        assert io.probe(out / name, io.ReadOptions()).n_frames == 6
    recorded = [n for n in visible if f".{n}.videdit-job.json" in names]
    assert recorded == visible[:len(recorded)] and len(visible) - len(recorded) <= 1
    temporaries = [n for n in names if ".videdit-tmp-" in n]
    assert len(temporaries) <= (0 if sig == signal.SIGINT else 1), names
    if sig == signal.SIGINT:
        assert "interrupted" in err

    rerun = edit_batch(jobs, runner=runner)
    assert [r.status for r in rerun.jobs] == ["skipped"] * len(recorded) + ["done"] * (4 - len(recorded))
    assert all(r.frames == 6 for r in rerun.jobs)
    assert not [p for p in out.iterdir() if ".videdit-tmp-" in p.name]


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
