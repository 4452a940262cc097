"""videdit batch on a local 2-worker Ray cluster (CPU): the 6 jobs of tests/test_batch.py give the same
outputs, byte for byte, as a local run, with one worker killed during its job (the job retried)."""

import pytest
import torch

from tests.test_batch import job_file
from videdit.batch import CRASH_ENV, JobRunner, edit_batch


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
        local = edit_batch(job_file(tmp_path / "local", shared_data), runner=JobRunner(tmp_path / "local-cache"))
    finally:
        torch.set_num_threads(threads)
    assert local.ok

    flag = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ENV, str(flag))   # the first worker to start a job kills itself (SIGKILL) first
    (tmp_path / "ray").mkdir()
    result = edit_batch(job_file(tmp_path / "ray", shared_data), ray=True, workers=2, cache_dir=tmp_path / "ray-cache",
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
        assert open(a.output, "rb").read() == open(b.output, "rb").read(), (a.output, b.output)
        assert a.frames == b.frames == 4
