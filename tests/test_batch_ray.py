"""videdit batch on a local 2-worker Ray cluster (CPU): the 6 jobs of tests/test_batch.py give the same
frames, bit for bit, as a local run, with one worker killed during its job (the job retried). The jobs
write PNG folders: the frames are what is guaranteed; an mp4 encoder may write other bytes for the same
frames (README, "Same inputs, same bits")."""

import numpy as np
import pytest
import torch

from tests.test_batch import job_file
from videdit import io
from videdit.batch import CRASH_ENV, JobRunner, edit_batch


FOLDERS = "out/{input}-{n}"   # a PNG folder per job


@pytest.fixture
def ray_session():
    ray = pytest.importorskip("ray")
    yield ray
    ray.shutdown()


def test_ray_two_workers_match_the_local_run_byte_for_byte_with_a_worker_killed(tmp_path, shared_data, ray_session,
                                                                                 monkeypatch):
    (tmp_path / "local").mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as each worker (one CPU each): the same sums in the same order
    try:
        local = edit_batch(job_file(tmp_path / "local", shared_data, output=FOLDERS),
                           runner=JobRunner(tmp_path / "local-cache"))
    finally:
        torch.set_num_threads(threads)
    assert local.ok

    flag = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ENV, str(flag))   # the first worker to start a job kills itself (SIGKILL) first
    (tmp_path / "ray").mkdir()
    result = edit_batch(job_file(tmp_path / "ray", shared_data, output=FOLDERS), ray=True, workers=2, cache_dir=tmp_path / "ray-cache",
                        retries=1)
    assert flag.exists() and result.workers == 2
    assert result.model_loads == 2   # one per living worker: the survivor and the dead one's replacement
    assert [r.status for r in result.jobs] == ["done"] * 6, [r.error for r in result.jobs]
    assert sorted(r.attempts for r in result.jobs) == [1] * 5 + [2]
    retried = next(r for r in result.jobs if r.attempts == 2)
    assert retried.index in (0, 2, 4)   # the first job of its clip: the others of the clip waited for it
    assert "3 computed, 3 from cache" in result.summary()
    assert len({r.worker for r in result.jobs}) >= 2
    for a, b in zip(local.jobs, result.jobs):
        one, two = io.read_clip(a.output)[0], io.read_clip(b.output)[0]
        assert one.shape[0] == two.shape[0] == a.frames == b.frames == 4
        assert np.abs(one.astype(int) - two).max() == 0, (a.output, b.output)


@pytest.mark.slow   # 15 s; the same split without Ray: tests/test_split.py
def test_a_64_frame_clip_split_over_two_ray_workers_gives_the_one_worker_frames(tmp_path, shared_data, ray_session):
    """man-skiing's first 64 frames at 64x64 (a PNG folder), keyframes:pixels=bilateral (tiny-random,
    2 steps, windows of 16): the first pass on one worker, its 2 window groups on both, the output
    (a PNG folder) assembled in order equals the one-worker local run (max abs difference 0); a
    job whose module carries state from window to window (cross_frame) runs whole on one worker
    and says so; the workers' per-frame progress reaches the display."""
    import io as _io

    import numpy as np

    from videdit import io

    clip, _ = io.read_clip(shared_data / "videos" / "man-skiing.mp4", io.ReadOptions(max_frames=64, size=(64, 64)))
    io.write_frames_dir(tmp_path / "ski", [clip])
    job = {"input": str(tmp_path / "ski"), "source": "a man is skiing", "target": "a robot is skiing",
           "model": "tiny-random", "steps": 2, "size": 64, "device": "cpu",
           "temporal": {"keyframes": {"pixels": "bilateral"}}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as each worker
    try:
        local = edit_batch([{**job, "output": str(tmp_path / "one")}], runner=JobRunner(tmp_path / "c1"), scores=False)
    finally:
        torch.set_num_threads(threads)
    assert local.ok
    stream = _io.StringIO()
    result = edit_batch([{**job, "output": str(tmp_path / "two"), "split": 2},
                         {**job, "max_frames": 4, "temporal": {"cross_frame": {}}, "output": str(tmp_path / "cf"),
                          "split": 2}],
                        ray=True, workers=2, cache_dir=tmp_path / "c2", scores=False, progress=True,
                        progress_file=stream)
    assert [r.status for r in result.jobs] == ["done", "done"], [r.error for r in result.jobs]
    split, whole = result.jobs
    assert split.frames == 64 and sorted(split.worker.split("+")) == ["ray1", "ray2"]
    one, _ = io.read_clip(tmp_path / "one")
    two, _ = io.read_clip(tmp_path / "two")
    assert one.shape == two.shape == (64, 64, 64, 3)
    assert np.abs(one.astype(int) - two).max() == 0
    assert whole.note == ("split 2: temporal module 'cross_frame' carries state from window to window; "
                          "the clip runs on one worker") and "+" not in whole.worker
    text = stream.getvalue()
    assert "| 2/2 [" in text and f"job 2 (ski:0): {whole.note}" in text
    assert "ski:0@ray" in text and "edit 64/64 frames" in text and "second pass 32/32 frames" in text, text


@pytest.mark.slow   # a Ray cluster start and 3 tiny-random tokenflow edits of 12 frames
def test_a_tokenflow_plus_clip_split_over_two_ray_workers_gives_the_one_worker_frames(tmp_path, ray_session):
    """keyframes + tokenflow scope window (tiny-random, 2 steps, 64 px, 12 frames in windows of 4,
    keyframes every 2): the keyframe pass on one worker, its 2 window groups' frames between
    keyframes edited on both workers' models, the output equal to the one-worker local run (max
    abs difference 0)."""
    from pathlib import Path

    import numpy as np

    from videdit import io

    job = {"input": str(Path(__file__).resolve().parents[1] / "samples" / "red-circle.mp4"), "source": "a dog",
           "target": "a cat", "model": "tiny-random", "steps": 2, "device": "cpu", "size": 64, "max_frames": 12,
           "window": 4, "editor": "plug_and_play",
           "temporal": {"keyframes": {"every": 2}, "tokenflow": {"scope": "window"}}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as each worker
    try:
        local = edit_batch([{**job, "output": str(tmp_path / "one")}], runner=JobRunner(tmp_path / "c1"), scores=False)
    finally:
        torch.set_num_threads(threads)
    assert local.ok
    result = edit_batch([{**job, "output": str(tmp_path / "two"), "split": 2}], ray=True, workers=2,
                        cache_dir=tmp_path / "c2", scores=False)
    [split] = result.jobs
    assert split.status == "done", split.error
    assert split.frames == 12 and sorted(split.worker.split("+")) == ["ray1", "ray2"]
    one, _ = io.read_clip(tmp_path / "one")
    two, _ = io.read_clip(tmp_path / "two")
    assert one.shape == two.shape == (12, 64, 64, 3)
    assert np.abs(one.astype(int) - two).max() == 0
