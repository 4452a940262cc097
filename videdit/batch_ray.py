"""A batch's jobs on a Ray cluster: one long-lived actor per worker, each keeping its model loaded
(a :class:`videdit.batch.JobRunner`), fed one job at a time; imported only for ``--ray``.

The first job of an inversion group (one input under one inversion's settings) runs before the
others of its group are handed out, so the group inverts once and the rest read the cache, as a
local run does. A job whose worker dies (the process killed, the node lost) is handed to a new
worker, up to ``retries`` times, then recorded as failed; a job that fails by itself (bad input)
is not retried. Outputs and the inversion cache are written by the workers: on several machines
their paths must be on a shared filesystem (the cache may be one folder per node instead).

A split job (``split: N``) runs its first pass on one worker; its window groups then go to
whichever workers are idle, ahead of the other jobs, and come back to the driver, which
writes the output from them in order (atomically) with its record. The workers' progress
(each window done) comes back through a Ray queue to the batch's one display.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import ray

from videdit.batch import Job, JobRecord, JobRunner, _one_line, split_of
from videdit.errors import VideditError


class BatchWorker:
    """A Ray actor: a :class:`JobRunner` that lives for the whole batch. Its jobs' progress (each
    window done) goes back to the driver through ``queue`` (a ``ray.util.queue.Queue``)."""

    def __init__(self, cache_dir: str | None, scores: bool, name: str, threads: int, queue=None):
        import torch

        torch.set_num_threads(max(1, threads))
        self.runner = JobRunner(cache_dir, scores=scores, name=name, crash_for_tests=True)
        self.name, self.queue = name, queue

    def _progress(self, index: int):
        def report(stage: str, done: int, total: int) -> None:
            if self.queue is not None:
                try:
                    self.queue.put_nowait((index, self.name, stage, done, total))
                except Exception:   # noqa: BLE001 -- progress is best effort: a full or gone queue loses a line
                    pass
        return report

    def run(self, job: Job, digest: str, attempt: int) -> JobRecord:
        return self.runner.run(job, digest, attempt, on_progress=self._progress(job.index))

    def first_pass(self, job: Job, digest: str, attempt: int):
        """A split job's first pass -> its :class:`videdit.split.ClipPass`, or its failed record."""
        t0 = time.perf_counter()
        try:
            self.runner._maybe_crash()
            return self.runner.first_pass(job, self._progress(job.index))
        except Exception as e:   # noqa: BLE001 -- recorded; the batch goes on
            return self.runner.failed(self.runner.record(job, digest, attempt), e, t0)

    def group(self, job: Job, clip, frames: range):
        """One window group of a split job -> its :class:`videdit.split.GroupFrames`, or its one-line error."""
        try:
            self.runner._maybe_crash()
            return self.runner.group(job, clip, frames, self._progress(job.index))
        except Exception as e:   # noqa: BLE001
            return _one_line(e)

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


@dataclass
class _Task:
    """One piece of work for a worker: a whole job, a split job's first pass, or one of its window groups."""

    kind: str                 # "job" | "first" | "group"
    job: Job
    digest: str
    attempt: int = 1
    frames: range | None = None   # "group": its clip frames


@dataclass
class _Split:
    """A split job in flight: its first pass's clip (in the object store) and its groups as they come."""

    clip: object
    clip_ref: dict                 # group start -> its part of the clip (ClipPass.part) in the object store
    groups: list
    t0: float
    done: dict = field(default_factory=dict)      # group start -> GroupFrames
    workers: list = field(default_factory=list)
    failed: bool = False


def run_jobs(todo: Sequence[tuple[Job, str]], *, address: str | None, cache_dir: Path | None, workers: int | None,
             gpus_per_worker: float | None, cpus_per_worker: float, retries: int, scores: bool,
             display, on_record: Callable[[JobRecord], None]) -> tuple[int, int]:
    """Run ``todo`` ((job, input digest) pairs) on Ray; each record goes to ``on_record`` as it
    comes, and the workers' progress to ``display`` (``batch._Display``; ``gpus_per_worker`` None:
    :func:`default_gpus_per_worker`). A split job (``split: N``, :func:`videdit.batch.split_of`)
    runs its first pass on one worker, then its window groups on any idle workers, ahead of
    other jobs; the driver writes its output from the groups in order. Returns (model loads, workers)."""
    from ray.util.queue import Queue

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
    queue = Queue(actor_options={"num_cpus": 0})
    driver = JobRunner(None if cache_dir is None else str(cache_dir), scores=scores, name="driver")
    made = 0

    def new_worker():
        nonlocal made
        made += 1
        name = f"ray{made}"
        return name, actor.remote(None if cache_dir is None else str(cache_dir), scores, name, threads, queue)

    idle = [new_worker() for _ in range(n)]

    def task(job: Job, digest: str) -> _Task:
        split, _ = split_of(job)
        return _Task("first" if split > 1 else "job", job, digest)

    # a group's first job first; the others of the group wait until it is done (the cache then holds its inversion)
    waiting: dict[str, deque] = {}
    ready: deque = deque()
    for job, digest in todo:
        group = job.inversion_group()
        if group in waiting:
            waiting[group].append(task(job, digest))
        else:
            waiting[group] = deque()
            ready.append(task(job, digest))
    running: dict = {}   # ObjectRef -> (worker name, worker, task)
    splits: dict[int, _Split] = {}

    def release(job: Job) -> None:
        group = waiting.get(job.inversion_group())
        if group:
            ready.extend(group)
            group.clear()

    def drain() -> None:
        try:
            for item in queue.get_nowait_batch(queue.qsize()):
                display.progress(*item)
        except Exception:   # noqa: BLE001 -- progress is best effort
            pass

    def submit(name: str, worker, t: _Task):
        if t.kind == "job":
            return worker.run.remote(t.job, t.digest, t.attempt)
        if t.kind == "first":
            return worker.first_pass.remote(t.job, t.digest, t.attempt)
        return worker.group.remote(t.job, splits[t.job.index].clip_ref[t.frames.start], t.frames)

    try:
        while ready or running or any(waiting.values()):
            while ready and idle:
                (name, worker), t = idle.pop(), ready.popleft()
                if t.kind == "group" and splits[t.job.index].failed:
                    idle.append((name, worker))
                    continue
                running[submit(name, worker, t)] = (name, worker, t)
                display.start(t.job, name)
            if not running:   # the rest of a group whose first job never finished: let them go
                for queue_ in waiting.values():
                    ready.extend(queue_)
                    queue_.clear()
                continue
            done, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
            drain()
            if not done:
                continue
            [ref] = done
            name, worker, t = running.pop(ref)
            job = t.job
            display.part_done(job.index, name)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as e:   # the worker died during the task
                idle.append(new_worker())
                if t.attempt <= retries:
                    ready.appendleft(dataclasses.replace(t, attempt=t.attempt + 1))
                    continue
                result = JobRecord(index=job.index, name=job.name, input=job.input, output=job.output,
                                   status="failed", attempts=t.attempt, worker=name,
                                   error=f"its worker died {t.attempt} times (last: {type(e).__name__})")
            else:
                idle.append((name, worker))
            if t.kind == "first" and not isinstance(result, JobRecord):   # the clip: its groups go first
                split, _ = split_of(job)
                parts = result.groups(split)
                splits[job.index] = _Split(result, {g.start: ray.put(result.part(g)) for g in parts}, parts,
                                           time.perf_counter() - result.seconds)
                splits[job.index].workers.append(name)
                ready.extendleft(reversed([_Task("group", job, t.digest, 1, g) for g in parts]))
                release(job)
                continue
            if t.kind == "group":
                state = splits[job.index]
                if state.failed:
                    continue
                if isinstance(result, JobRecord) or isinstance(result, str):   # died too often, or failed
                    state.failed = True
                    error = result if isinstance(result, str) else result.error
                    result = JobRecord(index=job.index, name=job.name, input=job.input, output=job.output,
                                       status="failed", attempts=t.attempt, worker=name, hash=None,
                                       error=f"window group {t.frames.start}..{t.frames.stop - 1}: {error}")
                    on_record(result)
                    continue
                state.done[t.frames.start] = result
                if name not in state.workers:
                    state.workers.append(name)
                if len(state.done) < len(state.groups):
                    continue
                result = driver.finish_split(job, t.digest, state.clip, [state.done[g.start] for g in state.groups],
                                             seconds=time.perf_counter() - state.t0, workers="+".join(state.workers))
                del splits[job.index]
            release(job)
            on_record(result)
        drain()
        loads = sum(ray.get([w.model_loads.remote() for _, w in idle]))   # the living workers'
    finally:   # done or interrupted: the workers go (a killed one leaves temporaries its job's rerun removes)
        for _, worker in idle + [(name, worker) for name, worker, _ in running.values()]:
            ray.kill(worker)
        try:
            queue.shutdown()
        except Exception:   # noqa: BLE001
            pass
    return loads, n
