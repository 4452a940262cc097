"""A batch's jobs on a Ray cluster: one long-lived actor per worker, each keeping its model loaded
(a :class:`videdit.batch.JobRunner`), fed one job at a time; imported only for ``--ray``.

The first job of an inversion group (one input under one inversion's settings) runs before the
others of its group are handed out, so the group inverts once and the rest read the cache, as a
local run does. A job whose worker dies (the process killed, the node lost) is handed to a new
worker, up to ``retries`` times, then recorded as failed; a job that fails by itself (bad input)
is not retried. Outputs and the inversion cache are written by the workers: on several machines
their paths must be on a shared filesystem (the cache may be one folder per node instead).
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Callable, Sequence

import ray

from videdit.batch import Job, JobRecord, JobRunner
from videdit.errors import VideditError


class BatchWorker:
    """A Ray actor: a :class:`JobRunner` that lives for the whole batch."""

    def __init__(self, cache_dir: str | None, scores: bool, name: str, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.runner = JobRunner(cache_dir, scores=scores, name=name, crash_for_tests=True)

    def run(self, job: Job, digest: str, attempt: int) -> JobRecord:
        return self.runner.run(job, digest, attempt)

    def model_loads(self) -> int:
        return self.runner.model_loads


def connect(address: str | None, workers: int | None, cpus_per_worker: float) -> None:
    """Join the cluster at ``address`` ("auto", host:port, ray://host:port), or start a local one
    (None) with room for ``workers``; once per process."""
    if ray.is_initialized():
        return
    try:
        if address is None:
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int((workers or 1) * cpus_per_worker)),
                     include_dashboard=False, log_to_driver=False, configure_logging=False,
                     object_store_memory=200 * 2 ** 20)   # jobs and records are small
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise VideditError(f"cannot reach the Ray cluster at {address!r}: {' '.join(str(e).split())[:300]}; start "
                           f"one (ray start --head) or leave out the address for a local cluster") from None


def default_gpus_per_worker() -> float:
    """1 where the cluster has GPUs (a worker per GPU), else 0 (CPU workers)."""
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def default_workers(n_jobs: int, gpus_per_worker: float, cpus_per_worker: float) -> int:
    """One worker per ``gpus_per_worker`` GPUs of the cluster (per ``cpus_per_worker`` CPUs without
    GPUs), at most one per job."""
    resources = ray.cluster_resources()
    if gpus_per_worker > 0:
        n = int(resources.get("GPU", 0) // gpus_per_worker)
        if n < 1:
            raise VideditError(f"the Ray cluster has {resources.get('GPU', 0):g} GPUs, fewer than "
                               f"--gpus-per-worker {gpus_per_worker:g}; lower it or add GPU nodes")
    else:
        n = int(resources.get("CPU", 1) // max(cpus_per_worker, 1e-6))
    return max(1, min(n, n_jobs))


def run_jobs(todo: Sequence[tuple[Job, str]], *, address: str | None, cache_dir: Path | None, workers: int | None,
             gpus_per_worker: float | None, cpus_per_worker: float, retries: int, scores: bool,
             on_start: Callable[[Job, str], None], on_record: Callable[[JobRecord], None]) -> tuple[int, int]:
    """Run ``todo`` ((job, input digest) pairs) on Ray; each record goes to ``on_record`` as it
    comes (``gpus_per_worker`` None: :func:`default_gpus_per_worker`). Returns (model loads, workers)."""
    if retries < 0:
        raise VideditError(f"retries must be >= 0, got {retries}")
    connect(address, workers, cpus_per_worker)
    if gpus_per_worker is None:
        gpus_per_worker = default_gpus_per_worker()
    n = workers if workers is not None else default_workers(len(todo), gpus_per_worker, cpus_per_worker)
    if n < 1:
        raise VideditError(f"workers must be >= 1, got {n}")
    actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=0)(BatchWorker)
    threads = max(1, int(cpus_per_worker))
    made = 0

    def new_worker():
        nonlocal made
        made += 1
        name = f"ray{made}"
        return name, actor.remote(None if cache_dir is None else str(cache_dir), scores, name, threads)

    idle = [new_worker() for _ in range(n)]
    # a group's first job first; the others of the group wait until it is done (the cache then holds its inversion)
    waiting: dict[str, deque] = {}
    ready: deque = deque()
    for job, digest in todo:
        group = job.inversion_group()
        if group in waiting:
            waiting[group].append((job, digest, 1))
        else:
            waiting[group] = deque()
            ready.append((job, digest, 1))
    running: dict = {}   # ObjectRef -> (worker, job, digest, attempt)
    try:
        while ready or running or any(waiting.values()):
            while ready and idle:
                (name, worker), (job, digest, attempt) = idle.pop(), ready.popleft()
                running[worker.run.remote(job, digest, attempt)] = (name, worker, job, digest, attempt)
                on_start(job, name)
            if not running:   # the rest of a group whose first job never finished: let them go
                for queue in waiting.values():
                    ready.extend(queue)
                    queue.clear()
                continue
            [ref], _ = ray.wait(list(running), num_returns=1)
            name, worker, job, digest, attempt = running.pop(ref)
            try:
                record = ray.get(ref)
            except ray.exceptions.RayActorError as e:   # the worker died during the job
                if attempt <= retries:
                    ready.appendleft((job, digest, attempt + 1))
                    idle.append(new_worker())
                    continue
                record = JobRecord(index=job.index, name=job.name, input=job.input, output=job.output,
                                   status="failed", attempts=attempt, worker=name,
                                   error=f"its worker died {attempt} times (last: {type(e).__name__})")
                idle.append(new_worker())
            else:
                idle.append((name, worker))
            group = waiting.get(job.inversion_group())
            if group:
                ready.extend(group)
                group.clear()
            on_record(record)
        loads = sum(ray.get([w.model_loads.remote() for _, w in idle]))   # the living workers'
    finally:   # done or interrupted: the workers go (a killed one leaves temporaries its job's rerun removes)
        for _, worker in idle + [(name, worker) for name, worker, *_ in running.values()]:
            ray.kill(worker)
    return loads, n
