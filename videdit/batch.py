"""Batch editing: many jobs (clips x prompts) run by workers that each keep their model loaded.

A job file (YAML, JSON Lines or CSV) lists jobs, each an input, prompts, options and an output;
shared ``defaults`` fill what a job leaves out, and one entry with several prompt pairs expands to
one job per pair. :func:`edit_batch` runs them here, one after another on one
:class:`JobRunner` (one model load), or on a Ray cluster (``ray=``, :mod:`videdit.batch_ray`,
imported only then). Inversions are shared through the on-disk cache, whose key already names
the clip, model, prompt and options, so the jobs of one clip invert it once.

Resumable: each finished job writes its record (:data:`RECORD_FORMAT`, a hash of its input's
bytes and its resolved options, with its figures) beside its output, as a hidden
``.NAME.videdit-job.json``; a job whose output exists with a record of the same hash is skipped,
a changed one is redone. Outputs are written atomically (a temporary sibling renamed in), so
an interrupted batch leaves whole outputs or none, and its rerun does the rest. One job's failure
is recorded with its one-line error and the others go on.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io as _io
import json
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from videdit.errors import VideditError
from videdit.registry import DEFAULT_MODEL

log = logging.getLogger("videdit.batch")
RECORD_FORMAT = "videdit-job-1"   # salts every job hash: bump it when what a job's output depends on changes
CRASH_ENV = "VIDEDIT_TEST_CRASH_WORKER"   # a file path: the first Ray worker to start a job creates it and dies

# the job options, by the name a job file uses -> the keyword of edit_video (or of the reading/model step)
EDIT_OPTIONS = ("source_prompt", "target_prompt", "negative_prompt", "steps", "guidance", "seed", "inversion",
                "inversion_params", "editor", "editor_params", "temporal", "window", "batch_size", "inversion_dtype",
                "keep_background", "strength", "steps_offset", "source_branch", "max_tokens", "token_merging")
READ_OPTIONS = ("start_frame", "end_frame", "start", "end", "stride", "fps", "max_frames", "size")
MODEL_OPTIONS = ("model", "model_config", "lora", "embeddings", "vae", "device", "dtype")
JOB_FIELDS = ("input", "output", "preview", "name")
EXPANDING = ("prompts", "targets")   # several prompt pairs in one entry
ALIASES = {"source": "source_prompt", "target": "target_prompt", "negative": "negative_prompt", "tome": "token_merging",
           "embedding": "embeddings"}
OPTIONS = frozenset(EDIT_OPTIONS + READ_OPTIONS + MODEL_OPTIONS + JOB_FIELDS + EXPANDING + ("config",))
# what a job's inversion does not depend on: jobs differing only in these share one (ordering in batch_ray)
EDIT_ONLY = frozenset({"target_prompt", "editor", "editor_params", "temporal", "keep_background", "source_branch",
                       "token_merging",
                       "output", "preview", "name", "max_tokens", "device"})


@dataclass(frozen=True)
class Job:
    """One edit of a batch, its options resolved (defaults, preset and aliases applied; paths absolute)."""

    index: int                # its place in the batch, from 0
    name: str
    input: str
    output: str
    options: Mapping[str, Any]   # the edit's, read and model options, by their job-file names
    preview: str | None = None

    @property
    def record_path(self) -> Path:
        """The job record beside the output: ``out/.wolf-1.mp4.videdit-job.json``."""
        out = Path(self.output)
        return out.with_name(f".{out.name}.videdit-job.json")

    def digest(self, input_digest: str) -> str:
        """sha256 of the job's input bytes (``input_digest``) and its resolved options and paths."""
        parts = {"format": RECORD_FORMAT, "input": input_digest, "output": self.output, "preview": self.preview,
                 "options": dict(self.options)}
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def inversion_group(self) -> str:
        """Jobs of one input whose inversion is the same: the first of them fills the cache for the rest."""
        parts = {k: v for k, v in self.options.items() if k not in EDIT_ONLY}
        return json.dumps([self.input, parts], sort_keys=True, default=str)


@dataclass
class JobRecord:
    """What became of one job: ``status`` is "done", "skipped" (its output and record were there) or
    "failed" (``error``: the one-line reason). ``inversions_computed``/``inversions_cached``: its
    windows inverted here / read from the cache. ``warp_error``: flow warp error of the output along
    the source's flow ([0, 255] units; None for a single frame)."""

    index: int
    name: str
    input: str
    output: str
    status: str
    seconds: float = 0.0
    frames: int | None = None
    warp_error: float | None = None
    inversions_computed: int = 0
    inversions_cached: int = 0
    error: str | None = None
    attempts: int = 1
    worker: str | None = None
    hash: str | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class BatchResult:
    """The records of a batch's jobs, in job order, and its summary."""

    jobs: list[JobRecord]
    seconds: float = 0.0
    model_loads: int = 0
    workers: int = 1
    report: Path | None = None

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.jobs)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0

    def summary(self) -> str:
        computed = sum(r.inversions_computed for r in self.jobs if r.status == "done")
        cached = sum(r.inversions_cached for r in self.jobs if r.status == "done")
        return (f"{len(self.jobs)} jobs: {self.count('done')} succeeded, {self.count('skipped')} skipped, "
                f"{self.count('failed')} failed in {self.seconds:.1f}s on {self.workers} worker(s) "
                f"({self.model_loads} model load(s); inversions: {computed} computed, {cached} from cache)")

    def to_json(self) -> dict:
        return {"summary": self.summary(), "succeeded": self.count("done"), "skipped": self.count("skipped"),
                "failed": self.count("failed"), "seconds": round(self.seconds, 3), "model_loads": self.model_loads,
                "workers": self.workers, "jobs": [r.to_json() for r in self.jobs]}

    def table(self) -> str:
        """A short table, one line per job: status, seconds, frames, warp error, inversions, output or error."""
        lines = [f"{'#':>3} {'status':<8} {'sec':>6} {'frames':>6} {'warp':>7} {'inv':>5}  output"]
        for r in self.jobs:
            warp = f"{r.warp_error:.2f}" if r.warp_error is not None else "-"
            inv = "cache" if r.inversions_cached and not r.inversions_computed else (
                "new" if r.inversions_computed else "-")
            tail = r.output if r.status != "failed" else f"{r.output}: {r.error}"
            lines.append(f"{r.index:>3} {r.status:<8} {r.seconds:>6.1f} {r.frames if r.frames is not None else '-':>6} "
                         f"{warp:>7} {inv:>5}  {tail}")
        return "\n".join(lines)


# --- job files ---------------------------------------------------------------------------------

def read_job_file(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """(defaults, entries) of a job file: YAML (``defaults:`` and ``jobs:``, or a list of jobs),
    JSON Lines (one job per line; a line ``{"defaults": {...}}`` sets the defaults) or CSV (a
    header of option names, one job per row; an empty cell leaves the option to the defaults)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise VideditError(f"cannot read the job file {path}: {e.strerror or e}") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = list(csv.DictReader(_io.StringIO(text)))
        return {}, [{k.strip(): _csv_value(v) for k, v in row.items() if k and v is not None and v.strip() != ""}
                    for row in rows]
    if suffix in (".jsonl", ".ndjson"):
        defaults, entries = {}, []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise VideditError(f"{path}, line {n}: not JSON ({e.msg}, column {e.colno})") from None
            if isinstance(entry, dict) and set(entry) == {"defaults"}:
                defaults = entry["defaults"]
            else:
                entries.append(entry)
        return _checked(path, defaults, entries)
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        from videdit.cli import _yaml_problem

        raise VideditError(f"job file {path} is not valid YAML: {_yaml_problem(e)}") from None
    if isinstance(data, list):
        return _checked(path, {}, data)
    if not isinstance(data, dict) or "jobs" not in data:
        raise VideditError(f"job file {path} must hold `jobs:` (a list of jobs) and optionally `defaults:`, "
                           f"or be a list of jobs")
    unknown = sorted(set(data) - {"defaults", "jobs"})
    if unknown:
        raise VideditError(f"job file {path}: unknown top-level key(s) {', '.join(unknown)}; "
                           f"it takes defaults and jobs")
    return _checked(path, data.get("defaults") or {}, data["jobs"] or [])


def _csv_value(text: str) -> Any:
    """A CSV cell read as YAML where that gives a number, flag, list or mapping; else the text."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, list, dict)) else text


def _checked(path: Path, defaults: Any, entries: Any) -> tuple[dict, list[dict]]:
    if not isinstance(defaults, dict):
        raise VideditError(f"job file {path}: defaults must be a mapping of option: value")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise VideditError(f"job file {path}: jobs must be a list of mappings (input, output, prompts, options)")
    return defaults, entries


def _normalise(entry: Mapping, where: str) -> dict:
    out = {}
    for key, value in entry.items():
        name = ALIASES.get(str(key).replace("-", "_"), str(key).replace("-", "_"))
        if name not in OPTIONS:
            raise VideditError(f"{where}: unknown option {key!r}; a job takes {', '.join(sorted(OPTIONS))}")
        out[name] = value
    return out


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "empty"


def _preset(path: Path, where: str) -> dict:
    """A preset (``config:``, as ``videdit edit --config`` reads it) as job options."""
    import yaml

    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise VideditError(f"{where}: cannot read the preset {path}: {' '.join(str(e).split())}") from None
    if not isinstance(values, dict):
        raise VideditError(f"{where}: the preset {path} must be a mapping of option: value")
    values = _normalise(values, f"{where}, preset {path}")
    values.pop("config", None)
    return values


def expand_jobs(entries: Sequence[Mapping], defaults: Mapping | None = None, *, base: str | os.PathLike = ".",
                overrides: Mapping | None = None) -> list[Job]:
    """Jobs from job-file entries: each entry over ``defaults`` (and its preset, ``config:``), under
    ``overrides``; ``prompts: [{source, target}, ...]`` or ``targets: [...]`` makes one job per pair.
    ``output`` may name ``{input}`` (the input's stem), ``{n}`` (the pair's index, from 0) and
    ``{target}`` (the target prompt, slugged). Relative paths are taken from ``base``. Every job's
    settings are validated here, before any work, and two jobs writing one output are refused."""
    from videdit.pipeline import _settings

    base = Path(base)
    defaults = _normalise(defaults or {}, "defaults")
    overrides = _normalise(overrides or {}, "overrides")
    jobs: list[Job] = []
    for e, entry in enumerate(entries):
        where = f"job {e + 1}"
        entry = _normalise(entry, where)
        merged = {**defaults, **entry}
        if "config" in merged:
            merged = {**defaults, **_preset(base / str(merged.pop("config")), where), **entry}
            merged.pop("config", None)
        merged.update(overrides)
        pairs = _pairs(merged, where)
        for key in ("input", "output"):
            if not merged.get(key):
                raise VideditError(f"{where}: no {key}; give each job an {key} (or one in defaults)")
        for n, (source, target) in enumerate(pairs):
            options = {k: v for k, v in merged.items() if k not in JOB_FIELDS + EXPANDING}
            options.setdefault("model", DEFAULT_MODEL)
            options["source_prompt"], options["target_prompt"] = source, target
            name = str(merged["input"])
            fields = {"input": Path(name).stem, "n": n, "target": _slug(target)}
            try:
                output = str(merged["output"]).format(**fields)
                preview = str(merged["preview"]).format(**fields) if merged.get("preview") else None
            except (KeyError, IndexError, ValueError) as err:
                raise VideditError(f"{where}: output {merged['output']!r} names an unknown field ({err}); "
                                   f"it may name {{input}}, {{n}} and {{target}}") from None
            for key in ("mask",):   # a path inside the editor's options
                params = options.get("editor_params")
                if isinstance(params, dict) and isinstance(params.get(key), str):
                    options["editor_params"] = {**params, key: str(base / params[key])}
            try:
                read_options(options)
                _settings(**{k: options[k] for k in EDIT_OPTIONS if k in options and k not in ("window", "max_tokens")})
            except TypeError as err:
                raise VideditError(f"{where}: {err}") from None
            except VideditError as err:
                raise VideditError(f"{where} ({name}): {err}") from None
            jobs.append(Job(index=len(jobs), name=merged.get("name") or f"{Path(name).stem}:{n}",
                            input=str((base / name).absolute()), output=str((base / output).absolute()),
                            preview=str((base / preview).absolute()) if preview else None, options=options))
    seen: dict[str, Job] = {}
    for job in jobs:
        if job.output in seen:
            raise VideditError(f"jobs {seen[job.output].index} and {job.index} both write {job.output}; name "
                               f"{{n}} or {{target}} in the output of an entry with several prompts")
        seen[job.output] = job
    return jobs


def _pairs(merged: dict, where: str) -> list[tuple[str, str]]:
    """The (source, target) prompt pairs of an entry."""
    if "prompts" in merged and "targets" in merged:
        raise VideditError(f"{where}: give prompts (pairs) or targets (with one source), not both")
    source = merged.pop("source_prompt", "")
    if "prompts" in merged:
        prompts = merged.pop("prompts")
        if not isinstance(prompts, list) or not prompts:
            raise VideditError(f"{where}: prompts must be a list of {{source, target}} pairs")
        pairs = []
        for p in prompts:
            p = _normalise(p, where) if isinstance(p, dict) else {"target_prompt": p}
            if "target_prompt" not in p:
                raise VideditError(f"{where}: each of prompts needs a target")
            pairs.append((str(p.get("source_prompt", source)), str(p["target_prompt"])))
        merged.pop("target_prompt", None)
        return pairs
    targets = merged.pop("targets", None)
    if targets is None:
        targets = merged.pop("target_prompt", None)
    else:
        merged.pop("target_prompt", None)
    if targets is None:
        raise VideditError(f"{where}: no target prompt; give target (or targets, or prompts)")
    targets = targets if isinstance(targets, list) else [targets]
    return [(str(source), str(t)) for t in targets]


# --- running jobs ------------------------------------------------------------------------------

def input_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, or of a folder's file names and bytes (sorted); "missing" when absent."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    try:
        for f in files:
            h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    except OSError:
        return "missing"
    return h.hexdigest()


def finished_record(job: Job, input_digest: str) -> dict | None:
    """The record beside ``job``'s output where it is the record of this very job (the same
    :meth:`Job.digest` of its options and its input's ``input_digest``) and the output exists;
    else None (the job is to run)."""
    if not Path(job.output).exists():
        return None
    try:
        record = json.loads(job.record_path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("hash") == job.digest(input_digest) else None


def _one_line(e: BaseException) -> str:
    """An exception as one line: a VideditError's message; another's type and first line."""
    text = " ".join(str(e).split()) if isinstance(e, VideditError) else \
        f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    return text[:500]


def _remove_stale_temporaries(*paths: Path) -> None:
    """The temporaries an earlier, killed run left beside ``paths`` (:func:`videdit.io.atomic.temp_sibling`'s
    ``.NAME.videdit-tmp-*``, ``-old-*``): this job owns its output's, preview's and record's names."""
    import glob
    import shutil

    for path in paths:
        for tag in ("tmp", "old"):
            for stale in path.parent.glob(f".{glob.escape(path.stem)}.videdit-{tag}-*{glob.escape(path.suffix)}"):
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)


class JobRunner:
    """Runs jobs one after another, keeping the last model it loaded (a worker of the batch).

    ``cache_dir``: the inversion cache every job reads and fills (None: the default). ``scores``:
    the output's warp error along the source's flow, per job."""

    def __init__(self, cache_dir: str | os.PathLike | None = None, *, scores: bool = True, name: str = "local",
                 crash_for_tests: bool = False):
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.scores = scores
        self.name = name
        self.model_loads = 0
        self._model_key: tuple | None = None
        self._model = None
        self._crash = crash_for_tests

    def model(self, options: Mapping):
        """The job's model, loaded once and kept while the jobs name the same one."""
        from videdit.models import load_model

        key = tuple(json.dumps(options.get(k), sort_keys=True, default=str) for k in MODEL_OPTIONS)
        if key != self._model_key:
            self._model = None   # the old one goes first: two models need not fit at once
            lora = options.get("lora") or ()
            embeddings = options.get("embeddings") or ()
            self._model = load_model(options["model"], device=options.get("device"), dtype=options.get("dtype"),
                                     config=options.get("model_config"),
                                     lora=[lora] if isinstance(lora, str) else list(lora),
                                     embeddings=[embeddings] if isinstance(embeddings, str) else list(embeddings),
                                     vae=options.get("vae"))
            self._model_key = key
            self.model_loads += 1
        return self._model

    def run(self, job: Job, digest: str, attempt: int = 1) -> JobRecord:
        """Edit ``job`` (whose input hashes to ``digest``, :func:`input_digest`) and write its record
        beside its output; a failure comes back as a "failed" record with its one-line error."""
        t0 = time.perf_counter()
        record = JobRecord(index=job.index, name=job.name, input=job.input, output=job.output, status="done",
                           attempts=attempt, worker=self.name, hash=job.digest(digest))
        try:
            self._maybe_crash()
            stats = self._edit(job)
            record.frames = stats.frames
            record.inversions_computed = stats.windows - stats.cache_hits
            record.inversions_cached = stats.cache_hits
            if self.scores and stats.frames > 1:
                record.warp_error = self._warp_error(job)
            record.seconds = time.perf_counter() - t0
            self._write_record(job, record)
        except Exception as e:   # noqa: BLE001 -- any job's failure is recorded; the batch goes on
            log.debug("job %d failed", job.index, exc_info=True)
            record.status, record.error = "failed", _one_line(e)
            record.seconds = time.perf_counter() - t0
        return record

    def _maybe_crash(self) -> None:
        """Tests' way to make a worker die mid-job: the first to find $VIDEDIT_TEST_CRASH_WORKER's file
        absent creates it and kills its own process."""
        flag = os.environ.get(CRASH_ENV)
        if not (self._crash and flag):
            return
        try:
            os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)

    def _edit(self, job: Job):
        from videdit.pipeline import edit_video

        o = job.options
        output = Path(job.output)
        _remove_stale_temporaries(output, job.record_path, *([Path(job.preview)] if job.preview else []))
        job.record_path.unlink(missing_ok=True)   # the output is about to change: its old record no longer holds
        model = self.model(o)
        result = edit_video(job.input, output, model=model, read=read_options(o), preview=job.preview,
                            overwrite=True, cache_dir=self.cache_dir, progress=False,
                            **{k: o[k] for k in EDIT_OPTIONS if k in o})
        return result.stats

    def _warp_error(self, job: Job) -> float:
        from videdit.metrics import evaluate_clips

        return float(evaluate_clips(job.input, job.output, read=read_options(job.options))["warp_error"])

    @staticmethod
    def _write_record(job: Job, record: JobRecord) -> None:
        from videdit.io import atomic_path

        with atomic_path(job.record_path) as tmp:
            tmp.write_text(json.dumps({**record.to_json(), "options": dict(job.options)}, indent=1,
                                      default=str) + "\n")


def read_options(options: Mapping):
    """A job's frame selection and working size as :class:`videdit.io.ReadOptions`."""
    from videdit import io

    size = options.get("size")
    if isinstance(size, str) and size.lower() != "source":
        import argparse

        from videdit.cli import _size

        try:
            size = _size(size)
        except argparse.ArgumentTypeError as e:
            raise VideditError(str(e)) from None
    if isinstance(size, list):
        size = tuple(size)
    return io.ReadOptions(start_frame=options.get("start_frame") or 0, end_frame=options.get("end_frame"),
                          start_s=options.get("start"), end_s=options.get("end"), stride=options.get("stride") or 1,
                          fps=options.get("fps"), max_frames=options.get("max_frames"), size=size)


# --- the batch ---------------------------------------------------------------------------------

class _Display:
    """The batch's progress: one bar of jobs done / total with its estimate, the running jobs beside it."""

    def __init__(self, total: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="jobs", unit="job", disable=not enabled, dynamic_ncols=True)
        self.running: dict[int, str] = {}

    def start(self, job: Job, worker: str) -> None:
        self.running[job.index] = f"{job.name}@{worker}"
        self._postfix()

    def finish(self, record: JobRecord) -> None:
        self.running.pop(record.index, None)
        self.bar.update(1)
        if record.status == "failed":
            self.bar.write(f"videdit: job {record.index} ({record.name}) failed: {record.error}")
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(("running " + ", ".join(self.running.values())) if self.running else "",
                                 refresh=True)

    def close(self) -> None:
        self.bar.close()


def edit_batch(jobs: str | os.PathLike | Iterable[Mapping | Job], *, defaults: Mapping | None = None,
               overrides: Mapping | None = None, cache_dir: str | os.PathLike | None = None,
               ray: str | bool | None = None, workers: int | None = None, gpus_per_worker: float | None = None,
               cpus_per_worker: float = 1, retries: int = 2, scores: bool = True,
               report: str | os.PathLike | None = None, progress: bool = False, runner: JobRunner | None = None,
               on_record: Callable[[JobRecord], None] | None = None) -> BatchResult:
    """Run a batch of edits: ``jobs`` is a job file (YAML, JSON Lines, CSV; :func:`read_job_file`) or
    job mappings (options by their job-file names, over ``defaults``; paths from the current folder).
    ``overrides`` set options of every job. Jobs whose output and record are there are skipped
    (:func:`finished_record`); the rest run here on one :class:`JobRunner` (``runner``: one to reuse,
    keeping its model; its cache is the one used), or with ``ray`` on a Ray cluster
    (:func:`videdit.batch_ray.run_jobs`): True or "local" starts one for the run, "auto" or an
    address joins one; ``workers`` actors of ``gpus_per_worker`` GPUs (None: 1 where the cluster
    has GPUs, else 0) and ``cpus_per_worker`` CPUs; a dead worker's job is retried up to ``retries``
    times. ``report``: a JSON file of the records and summary. Returns the records in job order; a
    failed job is one of them (``BatchResult.ok`` says whether all went well)."""
    t0 = time.perf_counter()
    if isinstance(jobs, (str, os.PathLike)):
        file_defaults, entries = read_job_file(jobs)
        expanded = expand_jobs(entries, {**(defaults or {}), **file_defaults}, base=Path(jobs).parent,
                               overrides=overrides)
    else:
        items = list(jobs)
        expanded = [j for j in items if isinstance(j, Job)] if all(isinstance(j, Job) for j in items) else \
            expand_jobs(items, defaults, overrides=overrides)
    if not expanded:
        raise VideditError("the batch has no jobs")
    if cache_dir is not None:
        cache_dir = Path(cache_dir).absolute()
    for job in expanded:   # the outputs' folders, made now: a path that cannot be one fails before any work
        try:
            Path(job.output).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VideditError(f"job {job.index} ({job.name}): cannot make the output folder "
                               f"{Path(job.output).parent} ({e.strerror or e}); change its output") from None
    digests: dict[str, str] = {}
    records: dict[int, JobRecord] = {}
    todo: list[tuple[Job, str]] = []
    for job in expanded:
        digest = digests.setdefault(job.input, input_digest(job.input))
        done = finished_record(job, digest)
        if done is not None:
            records[job.index] = JobRecord(index=job.index, name=job.name, input=job.input, output=job.output,
                                           status="skipped", frames=done.get("frames"),
                                           warp_error=done.get("warp_error"), hash=done["hash"], attempts=0)
        else:
            todo.append((job, digest))
    display = _Display(len(expanded), progress)
    display.bar.update(len(records))

    def finished(record: JobRecord) -> None:
        records[record.index] = record
        display.finish(record)
        if on_record is not None:
            on_record(record)

    loads, n_workers = 0, 1
    try:
        if todo and ray:
            from videdit import batch_ray

            loads, n_workers = batch_ray.run_jobs(todo, address=None if ray in (True, "local") else str(ray),
                                                  cache_dir=cache_dir, workers=workers,
                                                  gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                                                  retries=retries, scores=scores, on_start=display.start,
                                                  on_record=finished)
        elif todo:
            runner = runner if runner is not None else JobRunner(cache_dir, scores=scores)
            before = runner.model_loads
            for job, digest in todo:
                display.start(job, runner.name)
                finished(runner.run(job, digest))
            loads = runner.model_loads - before
    finally:
        display.close()
        result = BatchResult(jobs=[records[j.index] for j in expanded if j.index in records],
                             seconds=time.perf_counter() - t0, model_loads=loads, workers=n_workers)
        if report is not None:
            from videdit.io import atomic_path

            result.report = Path(report)
            with atomic_path(report) as tmp:
                tmp.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    return result
