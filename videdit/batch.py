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
import functools
import gc
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
from videdit.progress import progress_bar
from videdit.registry import DEFAULT_MODEL

log = logging.getLogger("videdit.batch")
Progress = Callable[[str, int, int], None]   # (stage, frames done, frames total) of the running job
RECORD_FORMAT = "videdit-job-1"   # salts every job hash: bump it when what a job's output depends on changes
CRASH_ENV = "VIDEDIT_TEST_CRASH_WORKER"   # a file path: the first Ray worker to start a job creates it and dies

# the job options, by the name a job file uses -> the keyword of edit_video (or of the reading/model step)
EDIT_OPTIONS = ("source_prompt", "target_prompt", "negative_prompt", "steps", "guidance", "seed", "inversion",
                "inversion_params", "editor", "editor_params", "temporal", "window", "batch_size", "inversion_dtype",
                "keep_background", "strength", "steps_offset", "source_branch", "max_tokens", "token_merging",
                "feature_cache")
READ_OPTIONS = ("start_frame", "end_frame", "start", "end", "stride", "fps", "max_frames", "size")
MODEL_OPTIONS = ("model", "model_config", "lora", "embeddings", "vae", "device", "dtype", "vae_dtype", "vae_tiling",
                 "compile", "channels_last")
SWITCHES = ("vae_tiling", "compile", "channels_last")   # true or false (compile: or inductor's mode)
CONTROL_OPTIONS = ("control", "controlnet")   # as `videdit edit --control/--controlnet`, paired by position
# how the batch runs a job, not what it makes (a split job's frames are the same; compiled and channels-last
# models make them within float rounding)
RUN_OPTIONS = ("split", "compile", "channels_last")
JOB_FIELDS = ("input", "output", "preview", "name")
EXPANDING = ("prompts", "targets")   # several prompt pairs in one entry
ALIASES = {"source": "source_prompt", "target": "target_prompt", "negative": "negative_prompt", "tome": "token_merging",
           "deepcache": "feature_cache", "embedding": "embeddings"}
OPTIONS = frozenset(EDIT_OPTIONS + READ_OPTIONS + MODEL_OPTIONS + CONTROL_OPTIONS + RUN_OPTIONS + JOB_FIELDS + EXPANDING
                    + ("config",))
# what a job's inversion does not depend on: jobs differing only in these share one (ordering in batch_ray)
EDIT_ONLY = frozenset({"target_prompt", "editor", "editor_params", "temporal", "keep_background", "source_branch",
                       "token_merging", "feature_cache", "output", "preview", "name", "max_tokens", "device",
                       "split", "compile", "channels_last"})


@dataclass(frozen=True)
class Job:
    """One edit of a batch, its options resolved (defaults, preset and aliases applied; paths absolute)."""

    index: int                # its place in the batch, from 0 (messages and the table count from 1)
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

    def digest(self, source_digest: str) -> str:
        """sha256 of the job's input bytes (``source_digest``: :func:`input_digest`), its resolved options
        and paths, and its mask file's bytes."""
        parts = {"format": RECORD_FORMAT, "input": source_digest, "output": self.output, "preview": self.preview,
                 "options": {k: v for k, v in self.options.items() if k not in RUN_OPTIONS}}
        mask = (self.options.get("editor_params") or {}).get("mask")
        if isinstance(mask, str):   # a mask file: its bytes, so a changed mask reruns the job
            parts["mask"] = input_digest(mask)
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def inversion_group(self) -> str:
        """Jobs of one input whose inversion is the same: the first of them fills the cache for the rest.
        A job whose editor reads only the source inverts nothing: a group of its own (it fills no cache)."""
        if job_settings(self.options).source_only:
            return json.dumps([self.input, "reads only the source", self.output])
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
    note: str | None = None     # e.g. why a split job ran on one worker
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
            frames = r.frames if r.frames is not None else "-"
            lines.append(f"{r.index + 1:>3} {r.status:<8} {r.seconds:>6.1f} {frames:>6} "
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
    except UnicodeDecodeError:
        raise VideditError(f"{path} is not a job file (not text); give a .yaml, .jsonl or .csv of jobs") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        reader, rows = csv.DictReader(_io.StringIO(text)), []
        for row in reader:
            if None in row:   # DictReader's key for the cells past the header's
                raise VideditError(f"{path}, line {reader.line_num}: {len(reader.fieldnames) + len(row[None])} cells, "
                                   f"more than the header's {len(reader.fieldnames)} columns")
            rows.append(row)
        return {}, [{k.strip(): _csv_value(v, k) for k, v in row.items() if k and v is not None and v.strip() != ""}
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


# CSV columns that hold text (prompts, paths, names) whatever they look like: "yes", "3.10", "a: b"
CSV_TEXT = frozenset({"input", "output", "preview", "name", "source", "target", "source_prompt", "target_prompt",
                      "negative", "negative_prompt", "model", "vae", "model_config", "config", "target_suffix"})


def _csv_value(text: str, column: str = "") -> Any:
    """A CSV cell read as YAML where that gives a number, flag, list or mapping; else, and in a
    column of text (``CSV_TEXT``), the text."""
    import yaml

    if column.strip().replace("-", "_") in CSV_TEXT:
        return text
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
    if not isinstance(entry, Mapping):
        raise VideditError(f"{where}: a job is a mapping of option: value (input, output, target, ...), got "
                           f"{type(entry).__name__} {str(entry)[:60]!r}")
    out = {}
    for key, value in entry.items():
        name = ALIASES.get(str(key).replace("-", "_"), str(key).replace("-", "_"))
        if name not in OPTIONS:
            import difflib

            named = sorted((OPTIONS - set(ALIASES.values())) | set(ALIASES))   # as the README names them
            close = difflib.get_close_matches(name, named, n=1)
            raise VideditError(f"{where}: unknown option {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                               + f"; a job takes {', '.join(named)}")
        if name == "compile" and isinstance(value, str):
            from videdit.models.speed import COMPILE_MODES

            if value not in COMPILE_MODES:
                raise VideditError(f"{where}: compile is true, false or one of {', '.join(COMPILE_MODES)}, "
                                   f"got {value!r}")
        elif name in SWITCHES and not isinstance(value, bool):
            raise VideditError(f"{where}: {key} is true or false, got {value!r}")
        out[name] = value
    return out


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "empty"


def _preset_file(base: Path, spec, where: str) -> Path:
    from videdit.config import preset_path

    try:
        return preset_path(str(spec), base)
    except VideditError as e:
        raise VideditError(f"{where}: {e}") from None


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
                overrides: Mapping | None = None, fallback: Mapping | None = None) -> list[Job]:
    """Jobs from job-file entries: each entry over ``defaults``, over its preset (``config:``), over
    ``fallback`` (what the caller gives where the file names nothing: `batch --model`), under
    ``overrides``; ``prompts: [{source, target}, ...]`` or ``targets: [...]`` makes one job per pair.
    ``output`` may name ``{input}`` (the input's stem), ``{n}`` (the pair's index, from 0) and
    ``{target}`` (the target prompt, slugged). Relative paths are taken from ``base``. Every job's
    settings are validated here, before any work, and two jobs writing one output are refused."""
    from videdit.io import GIF_SUFFIX
    from videdit.pipeline import _settings

    base = Path(base)
    defaults = _normalise(defaults or {}, "defaults")
    overrides = _normalise(overrides or {}, "overrides")
    fallback = _normalise(fallback or {}, "defaults")
    jobs: list[Job] = []
    for e, entry in enumerate(entries):
        where = f"entry {e + 1}"   # of the file's jobs, from 1; expanded, an entry may make several jobs
        entry = _normalise(entry, where)
        merged = {**defaults, **entry}
        # the preset under the file's defaults and the entry, as `edit --config` is under the flags
        preset = _preset(_preset_file(base, merged.pop("config"), where), where) if "config" in merged else {}
        merged = {**fallback, **preset, **merged}
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
            if preview is not None and (Path(preview).suffix.lower() != GIF_SUFFIX or preview == output):
                raise VideditError(f"{where}: preview {preview!r} must be a .gif beside the output, not "
                                   + ("the output itself" if preview == output else "another kind of file"))
            _resolve_control(options, base, where)
            _resolve_weights(options, base)
            for key in ("mask",):   # a path inside the editor's options
                params = options.get("editor_params")
                if isinstance(params, dict) and isinstance(params.get(key), str):
                    options["editor_params"] = {**params, key: str((base / params[key]).absolute())}
            split = options.get("split", 1)
            if isinstance(split, bool) or not isinstance(split, int) or split < 1:
                raise VideditError(f"{where}: split must be a whole number of workers >= 1, got {split!r}")
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
        for path in (job.output, job.preview):
            if path is not None and path in seen:
                raise VideditError(f"jobs {seen[path].index + 1} and {job.index + 1} both write {path}; name {{n}} "
                                   f"or {{target}} in the output and preview of an entry with several prompts")
            if path is not None:
                seen[path] = job
    return jobs


def _beside(value: Any, base: Path) -> Any:
    """A relative path naming a file or folder in ``base`` (the job file's folder): its absolute
    path, so any folder or worker finds it; anything else (a hub id, a built-in name) as it is."""
    if isinstance(value, str) and not Path(value).is_absolute() and (base / value).exists():
        return str((base / value).absolute())
    return value


def _resolve_weights(options: dict, base: Path) -> None:
    """``model``, ``vae``, ``model_config``, ``lora`` and ``embeddings`` beside the job file: absolute
    (:func:`_beside`)."""
    local = functools.partial(_beside, base=base)
    for key in ("model", "vae", "model_config"):
        if key in options:
            options[key] = local(options[key])
    for key in ("lora", "embeddings"):
        value = options.get(key)
        if value is None:
            continue
        out = []
        for item in [value] if isinstance(value, str) else list(value):
            if isinstance(item, str):
                name, sep, scale = item.rpartition("=")   # "FILE=SCALE"
                item = f"{local(name)}={scale}" if sep and local(name) != name else local(item)
            elif isinstance(item, (list, tuple)) and item:   # (FILE, SCALE)
                item = [local(item[0]), *item[1:]]
            out.append(item)
        options[key] = out[0] if isinstance(value, str) else out


def _resolve_control(options: dict, base: Path, where: str) -> None:
    """A job's ControlNets, as ``videdit edit`` takes them: ``control`` (conditions: "canny",
    "depth=PATH", ...) and ``controlnet`` ("MODEL" or "MODEL=SCALE"), each one value or a list,
    the k-th of one with the k-th of the other; or ``control`` alone as a list of mappings
    (condition, controlnet, scale, start, end). -> ``options["control"]``: a list of such
    mappings, a condition file's and a local ControlNet's relative path taken from ``base``."""
    from videdit.control import ControlSpec, pair_controls

    control, nets = options.pop("control", None), options.pop("controlnet", None)
    if control is None and nets is None:
        return
    as_list = (lambda v: [] if v is None else [v] if isinstance(v, (str, dict)) else v)  # noqa: E731
    control, nets = as_list(control), as_list(nets)
    if not isinstance(control, list) or not isinstance(nets, list):
        raise VideditError(f"{where}: control and controlnet take one value or a list each")
    try:
        if control and all(isinstance(c, dict) for c in control) and not nets:
            specs = [ControlSpec.of(c) for c in control]
        elif all(isinstance(c, str) for c in control + nets):
            specs = pair_controls(control, nets)
        else:
            raise VideditError("control takes conditions (canny, depth=PATH, ...) paired with controlnet's models, "
                               "or a list of mappings {condition, controlnet, scale}")
    except (TypeError, VideditError) as e:
        raise VideditError(f"{where}: {e}") from None
    out = []
    for spec in specs:
        condition = spec.condition
        if condition.path is not None and not condition.path.is_absolute():
            condition = f"{condition.kind}={(base / condition.path).absolute()}"
        out.append({"condition": str(condition), "controlnet": _beside(spec.controlnet, base), "scale": spec.scale,
                    "start": spec.start, "end": spec.end})
    if out:
        options["control"] = out


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
    if not targets:
        raise VideditError(f"{where}: targets is empty; give it at least one target prompt")
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


SMALL_FILE = 1 << 20   # weight files up to this size are hashed by content, larger ones by size and mtime


def _file_stamp(path: Path) -> str:
    """A file's content digest (small files) or its size and mtime in ns (large ones: cheap, and
    changes whenever the file is rewritten)."""
    st = path.stat()
    if st.st_size <= SMALL_FILE:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _hub_revision(repo_id: str) -> str | None:
    """The commit the Hugging Face cache resolves ``repo_id``'s main branch to, where it is cached."""
    try:
        from huggingface_hub import constants

        ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
        return ref.read_text().strip() if ref.is_file() else None
    except (ImportError, OSError):
        return None


def weights_digest(options: Mapping) -> str:
    """sha256 over what a job's weights are, so that weights changed in place redo the job: each
    local model, VAE, config, LoRA, embedding or ControlNet (file or folder) by its files'
    :func:`_file_stamp`; a hub id by the revision it resolves to in the cache; a given ControlNet
    condition file by its bytes (:func:`input_digest`). Built-in models (tiny-random, toy) are
    their names, already in the options."""
    def values(key):
        v = options.get(key)
        return [] if v is None else [v] if isinstance(v, (str, os.PathLike)) else list(v)

    paths = [str(v) for key in ("model", "vae", "model_config") for v in values(key)]
    paths += [str(v[0] if isinstance(v, (list, tuple)) else v).rpartition("=")[0] or str(v)
              for key in ("lora", "embeddings") for v in values(key)]
    for c in options.get("control") or ():
        paths.append(str(c["controlnet"]))
        condition = str(c["condition"])
        if "=" in condition:
            paths.append(condition.partition("=")[2])
    h = hashlib.sha256()
    for spec in paths:
        path = Path(spec).expanduser()
        if path.is_file():
            h.update(f"{spec}:{_file_stamp(path)}".encode())
        elif path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                h.update(f"{spec}/{f.relative_to(path).as_posix()}:{_file_stamp(f)}".encode())
        elif spec.count("/") == 1 and not spec.startswith((".", "/")):
            h.update(f"{spec}@{_hub_revision(spec)}".encode())
    return h.hexdigest()


def finished_record(job: Job, input_digest: str) -> dict | None:
    """The record beside ``job``'s output where it is the record of this very job (the same
    :meth:`Job.digest` of its options and its input's ``input_digest``) and the output exists;
    else None (the job is to run)."""
    if not Path(job.output).exists() or (job.preview is not None and not Path(job.preview).exists()):
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
        import torch

        from videdit.models import load_model

        key = tuple(json.dumps(options.get(k), sort_keys=True, default=str) for k in MODEL_OPTIONS) + (
            weights_digest({k: options.get(k) for k in MODEL_OPTIONS}),)   # weights changed in place: load again
        if key != self._model_key:
            self._model = None   # the old one goes first: two models need not fit at once
            gc.collect()         # a compiled model's blocks refer to themselves (their wrapped forwards)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            lora = options.get("lora") or ()
            embeddings = options.get("embeddings") or ()
            self._model = load_model(options["model"], device=options.get("device"), dtype=options.get("dtype"),
                                     config=options.get("model_config"),
                                     lora=[lora] if isinstance(lora, str) else list(lora),
                                     embeddings=[embeddings] if isinstance(embeddings, str) else list(embeddings),
                                     vae=options.get("vae"), vae_dtype=options.get("vae_dtype"),
                                     **{k: options.get(k) or False for k in SWITCHES})
            self._model_key = key
            self.model_loads += 1
        return self._model

    def run(self, job: Job, digest: str, attempt: int = 1, on_progress: Progress | None = None) -> JobRecord:
        """Edit ``job`` (whose input hashes to ``digest``, :func:`input_digest`) and write its record
        beside its output; a failure comes back as a "failed" record with its one-line error.
        A job with ``split: N`` whose modules allow it runs as the split pieces here, one group
        after another (:meth:`first_pass`, :meth:`group`, :meth:`finish_split`): the frames of
        the one-worker run. ``on_progress(stage, frames_done, frames_total)``: after each window."""
        t0 = time.perf_counter()
        record = self.record(job, digest, attempt)
        try:
            self._maybe_crash()
            split, note = split_of(job)
            if split > 1:
                clip = self.first_pass(job, on_progress)
                groups = [self.group(job, clip, g, on_progress) for g in clip.groups(split)]
                return self.finish_split(job, digest, clip, groups, attempt=attempt, seconds=time.perf_counter() - t0)
            record.note = note
            stats = self._edit(job, on_progress)
            record.frames = stats.frames
            record.inversions_computed = stats.windows - stats.cache_hits
            record.inversions_cached = stats.cache_hits
            if self.scores and stats.frames > 1:
                record.warp_error = self._warp_error(job)
            record.seconds = time.perf_counter() - t0
            self._write_record(job, record)
        except Exception as e:   # noqa: BLE001 -- any job's failure is recorded; the batch goes on
            return self.failed(record, e, t0)
        return record

    def record(self, job: Job, digest: str, attempt: int = 1) -> JobRecord:
        """A "done" record of ``job`` on this worker, to be filled."""
        return JobRecord(index=job.index, name=job.name, input=job.input, output=job.output, status="done",
                         attempts=attempt, worker=self.name, hash=job.digest(digest))

    @staticmethod
    def failed(record: JobRecord, e: BaseException, t0: float) -> JobRecord:
        log.debug("job %d failed", record.index, exc_info=True)
        record.status, record.error = "failed", _one_line(e)
        record.seconds = time.perf_counter() - t0
        return record

    def first_pass(self, job: Job, on_progress: Progress | None = None):
        """A split job's first pass (:func:`videdit.split.first_pass`): its windows edited in order
        on this worker's model -> the :class:`videdit.split.ClipPass` its groups read."""
        from videdit.split import first_pass

        o = job.options
        _remove_stale_temporaries(Path(job.output), job.record_path, *([Path(job.preview)] if job.preview else []))
        job.record_path.unlink(missing_ok=True)   # the output is about to change: its old record no longer holds
        return first_pass(job.input, model=self.model(o), read=read_options(o), cache_dir=self.cache_dir,
                          control=control_specs(o), on_progress=on_progress,
                          **{k: o[k] for k in EDIT_OPTIONS if k in o})

    def group(self, job: Job, clip, frames: range, on_progress: Progress | None = None):
        """One window group of a split job (:func:`videdit.split.group_frames`): no model needed,
        except for a keyframe split (tokenflow), whose frames between keyframes this worker's model
        edits (through its inversion cache)."""
        from videdit.split import group_frames

        model = self.model(job.options) if clip.needs_model else None
        return group_frames(clip, frames, model=model, cache_dir=self.cache_dir, preview=job.preview is not None,
                            on_progress=on_progress)

    def finish_split(self, job: Job, digest: str, clip, groups: Iterable, *, attempt: int = 1,
                     seconds: float = 0.0, workers: str | None = None) -> JobRecord:
        """A split job's groups (in order) written atomically as its output, scored, and its record."""
        from videdit.split import write_split

        t0 = time.perf_counter()
        record = self.record(job, digest, attempt)
        record.worker = workers or self.name
        try:
            write_split(job.output, clip, groups, preview=job.preview, overwrite=True)
            record.frames = clip.n_frames
            record.inversions_computed = clip.windows - clip.cache_hits
            record.inversions_cached = clip.cache_hits
            if self.scores and clip.n_frames > 1:
                record.warp_error = self._warp_error(job)
            record.seconds = seconds + time.perf_counter() - t0
            self._write_record(job, record)
        except Exception as e:   # noqa: BLE001
            return self.failed(record, e, t0 - seconds)
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

    def _edit(self, job: Job, on_progress: Progress | None = None):
        from videdit.pipeline import edit_video

        o = job.options
        output = Path(job.output)
        _remove_stale_temporaries(output, job.record_path, *([Path(job.preview)] if job.preview else []))
        job.record_path.unlink(missing_ok=True)   # the output is about to change: its old record no longer holds
        model = self.model(o)
        result = edit_video(job.input, output, model=model, read=read_options(o), preview=job.preview,
                            overwrite=True, cache_dir=self.cache_dir, progress=False, control=control_specs(o),
                            on_progress=on_progress,
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


def job_settings(options: Mapping):
    """A job's :class:`videdit.pipeline.EditSettings` (validated)."""
    from videdit.pipeline import _settings

    return _settings(**{k: options[k] for k in EDIT_OPTIONS if k in options and k not in ("window", "max_tokens")})


def split_of(job: Job) -> tuple[int, str | None]:
    """How many window groups ``job`` is split into (``split``, 1: none) and, where it asked for
    more and its temporal modules carry state from window to window, 1 and the one line that
    says so (:func:`videdit.split.split_refusal`)."""
    from videdit.split import KEYFRAME_SPLIT_CONTROL, split_refusal

    n = job.options.get("split") or 1
    if n <= 1:
        return 1, None
    settings = job_settings(job.options)
    why = split_refusal(settings)
    if why is None and settings.temporal_stack().keyframe_split and control_specs(job.options):
        why = KEYFRAME_SPLIT_CONTROL
    return (1, f"split {n}: {why}") if why is not None else (n, None)


def control_specs(options: Mapping) -> list | None:
    """A job's ControlNets (:func:`_resolve_control`'s mappings) as :class:`videdit.control.ControlSpec`."""
    from videdit.control import ControlSpec

    return [ControlSpec.of(c) for c in options["control"]] if options.get("control") else None


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
                          start_s=options.get("start"), end_s=options.get("end"), stride=options.get("stride", 1),
                          fps=options.get("fps"), max_frames=options.get("max_frames"), size=size)


# --- the batch ---------------------------------------------------------------------------------

class _Display:
    """The batch's progress, one display: a bar of jobs done / total with its estimate, and beside it
    each running job (or split job's part) with its worker, stage and frames done / total."""

    def __init__(self, total: int, enabled: bool, file=None):
        self.bar = progress_bar(total=total, desc="jobs", unit="job", disable=not enabled, dynamic_ncols=True,
                                file=file)
        self.file = file   # None: the bar on stderr, its lines on stdout
        self.running: dict[tuple[int, str], str] = {}   # (job index, worker) -> "name@worker[ stage n/N frames]"
        self.names: dict[int, str] = {}

    def start(self, job: Job, worker: str) -> None:
        self.names[job.index] = job.name
        self.running[job.index, worker] = f"{job.name}@{worker}"
        self._postfix()

    def progress(self, index: int, worker: str, stage: str, done: int, total: int) -> None:
        """A running job's window finished on ``worker``: ``done`` of ``total`` frames of ``stage``."""
        if (index, worker) in self.running:
            self.running[index, worker] = f"{self.names.get(index, index)}@{worker} {stage} {done}/{total} frames"
            self._postfix()

    def part_done(self, index: int, worker: str) -> None:
        self.running.pop((index, worker), None)
        self._postfix()

    def finish(self, record: JobRecord) -> None:
        for key in [k for k in self.running if k[0] == record.index]:
            del self.running[key]
        self.bar.update(1)
        if record.status == "failed":
            self.bar.write(f"videdit: job {record.index + 1} ({record.name}) failed: {record.error}", file=self.file)
        elif record.note:
            self.bar.write(f"videdit: job {record.index + 1} ({record.name}): {record.note}", file=self.file)
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(("running " + ", ".join(self.running.values())) if self.running else "",
                                 refresh=True)

    def close(self) -> None:
        self.bar.close()


def edit_batch(jobs: str | os.PathLike | Mapping | Job | Iterable[Mapping | Job], *, defaults: Mapping | None = None,
               overrides: Mapping | None = None, cache_dir: str | os.PathLike | None = None,
               ray: str | bool | None = None, workers: int | None = None, gpus_per_worker: float | None = None,
               cpus_per_worker: float = 1, retries: int = 2, scores: bool = True,
               report: str | os.PathLike | None = None, progress: bool = False, runner: JobRunner | None = None,
               on_record: Callable[[JobRecord], None] | None = None, progress_file=None) -> BatchResult:
    """Run a batch of edits: ``jobs`` is a job file (YAML, JSON Lines, CSV; :func:`read_job_file`),
    job mappings, or one (options by their job-file names, over ``defaults``; paths from the current folder);
    a job file's own defaults and presets come over ``defaults``. ``overrides`` set options of every job.
    Jobs whose output and record are there are skipped (:func:`finished_record`); the rest run here on
    one :class:`JobRunner` (``runner``: one to reuse, keeping its model; its cache is the one used), or
    with ``ray`` on a Ray cluster
    (:func:`videdit.batch_ray.run_jobs`): True or "local" starts one for the run, "auto" or an
    address joins one; ``workers`` actors of ``gpus_per_worker`` GPUs (None: 1 where the cluster
    has GPUs, else 0) and ``cpus_per_worker`` CPUs; a dead worker's job is retried up to ``retries``
    times. A job with ``split: N`` (N > 1) whose temporal modules allow it has its first pass run
    on one worker and its window groups on up to N (:mod:`videdit.split`); one whose modules
    carry state from window to window runs whole, its record's ``note`` saying why. ``progress``:
    one display (on ``progress_file``, default stderr) of jobs done / total with an estimate and
    each running job's worker, stage and frames. ``report``: a JSON file of the records and summary.
    Returns the records in job order; a failed job is one of them (``BatchResult.ok`` says whether
    all went well)."""
    t0 = time.perf_counter()
    if isinstance(jobs, (str, os.PathLike)):
        file_defaults, entries = read_job_file(jobs)
        expanded = expand_jobs(entries, file_defaults, base=Path(jobs).parent, overrides=overrides,
                               fallback=defaults)
    else:
        items = [jobs] if isinstance(jobs, (Mapping, Job)) else list(jobs)   # one job alone
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
            raise VideditError(f"job {job.index + 1} ({job.name}): cannot make the output folder "
                               f"{Path(job.output).parent} ({e.strerror or e}); change its output") from None
    digests: dict[str, str] = {}
    records: dict[int, JobRecord] = {}
    todo: list[tuple[Job, str]] = []
    for job in expanded:
        # the input's bytes and the weights' stamps: either changed in place redoes the job
        digest = digests.setdefault(job.input, input_digest(job.input)) + ":" + weights_digest(job.options)
        done = finished_record(job, digest)
        if done is not None:
            records[job.index] = JobRecord(index=job.index, name=job.name, input=job.input, output=job.output,
                                           status="skipped", frames=done.get("frames"),
                                           warp_error=done.get("warp_error"), hash=done["hash"], attempts=0)
        else:
            todo.append((job, digest))
    display = _Display(len(expanded), progress, progress_file)
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
                                                  retries=retries, scores=scores, display=display,
                                                  on_record=finished)
        elif todo:
            runner = runner if runner is not None else JobRunner(cache_dir, scores=scores)
            before = runner.model_loads
            for job, digest in todo:
                display.start(job, runner.name)
                finished(runner.run(job, digest, on_progress=lambda stage, done, total, i=job.index:
                                    display.progress(i, runner.name, stage, done, total)))
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
