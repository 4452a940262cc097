"""``videdit serve``: a Gradio page over the Python API (``pip install "videdit[ui]"``).

The page is a thin layer: its settings become a YAML preset, parsed by the command line's own
parser (``cli._with_config``) and turned into ``edit_video``'s arguments by ``cli.edit_kwargs``,
so the preset the page offers for download reproduces its run with ``videdit edit --config``.
One model is loaded per server; runs go one at a time (a lock: a page's run that waits for
another's says so, and its page's cancel, or closing it, stops it before it starts; past
``WAITING`` runs, Gradio's queue holds the rest). Progress comes from the pipeline's own tqdm
bars (:func:`watch_bars`), which is also where a cancel stops the run: the output is written
atomically, so a cancelled run leaves nothing behind and the model stays loaded.

Safe by default: it binds to 127.0.0.1; uploads are limited in size, frames and duration;
uploads and outputs live in one temporary folder per server, removed on exit (a page's upload that no
run read goes sooner, when the page replaces it or closes); the page's inputs
name no path on the server (the clip is kept server-side, presets are picked by name, and option
values that look like paths are refused).

Everything but :func:`build_page` and :func:`serve` runs without Gradio (the unit tests use it).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import typing
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from videdit.config import PRESETS_DIR
from videdit.errors import VideditError

log = logging.getLogger("videdit")
ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "red-circle.mp4"
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif")
NO_PRESET = "(none)"
EDITORS_INVERSION = "(the editor's)"        # the inversion choice that leaves it to the editor
OPTION_KEYS = ("inversion_params", "editor_params", "temporal")   # what the options box may set
INSTALL_HINT = 'videdit serve needs Gradio: pip install "videdit[ui]"'
WAITING = 7   # runs that may wait in the server for the one on (cancellable there); Gradio queues any more


class Cancelled(VideditError):
    """The run was cancelled from the page."""


@dataclass(frozen=True)
class Limits:
    """What an upload may be: its size in MB, the clip's duration in seconds and its frames."""

    max_upload_mb: float = 200
    max_seconds: float = 60
    max_frames: int = 600


# --- presets and methods, from configs/ and the registries -------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    name: str
    description: str     # the first sentence of the file's leading comment
    values: dict


def presets(directory: Path = PRESETS_DIR) -> dict[str, Preset]:
    """The YAML presets of ``directory`` by name (file stem), each with its one-line description."""
    out = {}
    for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
        text = path.read_text()
        comment = []
        for line in text.splitlines():
            if not line.startswith("#"):
                break
            line = line.lstrip("#").strip()
            if line.startswith("videdit ") or not line:
                break
            comment.append(line)
        out[path.stem] = Preset(path.stem, first_sentence(" ".join(comment), path.stem), yaml.safe_load(text) or {})
    return out


def first_sentence(text: str, name: str = "") -> str:
    """``text`` up to its first "." or ":" that ends a clause: followed by a space or the end and
    outside brackets ("Avrahami et al. 2023" and "(not the recipe: that is ...)" go on), without a
    leading "NAME:"."""
    text = text.removeprefix(f"{name}:").strip() if name else text.strip()
    depth = 0
    for i, c in enumerate(text):
        depth = max(0, depth + (c in "([{") - (c in ")]}"))   # a stray ")" (as in "1) ...") opens nothing
        if (depth == 0 and c in ".:" and (i + 1 == len(text) or text[i + 1] == " ")
                and not text[:i].endswith((" al", "e.g", "i.e"))):
            return text[:i + 1].rstrip(":")
    return text


@dataclass(frozen=True)
class MethodEntry:
    """One registered method, as the advanced panel lists it."""

    kind: str                                   # the title `videdit methods` prints
    name: str
    summary: str
    options: tuple[tuple[str, str, Any], ...]   # (option, type, default)

    def options_line(self) -> str:
        """The options as `videdit methods` prints them."""
        return ", ".join(f"{k}={v!r}" for k, _, v in self.options)


def _type_name(hint) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("collections.abc.", "")


def method_entries() -> list[MethodEntry]:
    """Every registered inversion, editor and temporal module with its typed options and their
    defaults, from the registries `videdit methods` lists (``cli.method_registries``): a new
    method appears in the page without UI code."""
    from videdit.cli import method_registries

    out = []
    for title, registry in method_registries():
        for name, spec in sorted(registry.items()):
            try:
                hints = typing.get_type_hints(spec.config)
            except (NameError, TypeError):
                hints = {}
            options = tuple((k, _type_name(hints.get(k, type(v))), v) for k, v in spec.options())
            out.append(MethodEntry(title, name, spec.summary, options))
    return out


def options_reference(entries: list[MethodEntry], names: dict[str, list[str]]) -> str:
    """Markdown: the options of the chosen methods (``names``: kind title -> names) with types and
    defaults, the key the options box takes them under, and the method's one line."""
    key = {"inversions": "inversion_params", "editors": "editor_params"}
    label = {"inversions": "inversion", "editors": "editor"}
    blocks = []
    for e in entries:
        if e.name not in names.get(e.kind, []):
            continue
        under = key.get(e.kind, f"temporal: {{{e.name}: ...}}")
        lines = [f"**{e.name}** ({label.get(e.kind, 'temporal module')}; under `{under}`): {e.summary}", ""]
        lines += [f"- `{k}`: {t} = `{v!r}`" for k, t, v in e.options] or ["- no options"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# --- the page's settings <-> a YAML preset ----------------------------------------------------------------------


# options whose strings are files (the editors' masks and maps, RAFT's weights): refused whatever they name, so
# that no answer tells which files the server has
FILE_OPTIONS = ("mask", "map", "target_mask", "raft_weights")


def _no_server_paths(value: Any, where: str) -> None:
    """Refuse a string that looks like a path on the server, or any string given to an option that
    reads a file (the page reads no server files; a mask is uploaded)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k in FILE_OPTIONS and isinstance(v, str):
                raise VideditError(f"{where}.{k}: the page reads no server files"
                                   + ("; upload a mask in the mask field" if k != "raft_weights" else ""))
            _no_server_paths(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for v in value:
            _no_server_paths(v, where)
    elif isinstance(value, str) and value and ("/" in value or "\\" in value or value.startswith("~")):
        raise VideditError(f"{where}: {value!r} looks like a path on the server; the page reads no server files")


def parse_options(text: str) -> dict:
    """The advanced panel's options box (YAML: ``inversion_params``, ``editor_params``, ``temporal``
    mappings) as a dict, in one line where it is not that."""
    try:
        values = yaml.safe_load(text or "") or {}
    except yaml.YAMLError as e:
        from videdit.cli import _yaml_problem

        raise VideditError(f"options are not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(values, dict):
        raise VideditError(f"options must be a mapping with keys {', '.join(OPTION_KEYS)}")
    unknown = sorted(set(values) - set(OPTION_KEYS))
    if unknown:
        raise VideditError(f"options take {', '.join(OPTION_KEYS)}; not {', '.join(map(str, unknown))}")
    for k, v in values.items():
        if v is not None and not isinstance(v, dict):
            raise VideditError(f"options: {k} must be a mapping of option: value")
        if k == "temporal" and v and not all(isinstance(o, dict) or o is None for o in v.values()):
            raise VideditError("options: temporal must map module names to their options")
    _no_server_paths(values, "options")
    return {k: v or {} for k, v in values.items()}


def format_options(config: dict) -> str:
    """The options box's text for a preset or a run's settings."""
    return yaml.safe_dump({k: config.get(k) or {} for k in OPTION_KEYS}, sort_keys=False, default_flow_style=None)


@dataclass
class PageSettings:
    """What the page's fields hold (everything but the clip)."""

    source: str = ""
    target: str = ""
    preset: str = NO_PRESET
    inversion: str = EDITORS_INVERSION
    editor: str = "plain"
    temporal: list = field(default_factory=list)
    options: str = ""
    steps: float | None = None       # None or 0: the method's
    guidance: float | str | None = None   # None or "": the method's
    seed: float = 0
    start_frame: float | None = 0
    end_frame: float | None = None   # None or 0: to the end
    size: str = ""
    extra: dict = field(default_factory=dict)   # a run's keys no field shows (a preset's strength, ...): kept


# the keys of a run's preset that the page's fields (and the server) set; the others are kept as they are
FIELD_KEYS = ("model", "dtype", "source", "target", "inversion", "editor", *OPTION_KEYS, "steps", "guidance", "seed",
              "start_frame", "end_frame", "size", "mask")


def _whole(value, name: str, low: int) -> int | None:
    if value is None or value == "":
        return None
    if float(value) != int(float(value)) or int(float(value)) < low:
        raise VideditError(f"{name} must be a whole number >= {low}, got {value}")
    return int(float(value))


def build_config(s: PageSettings, *, model: str, dtype: str = "fp32",
                 preset_table: dict[str, Preset] | None = None, mask: str | None = None) -> dict:
    """The YAML preset of a run (keys of `videdit edit --config`): the chosen preset's values under
    the page's fields. Its own ``model`` is the server's (every run uses the one loaded).
    ``mask``: the mask's file name, kept beside the preset, as the ``mask`` key (`videdit edit
    --mask`'s), which a relative name reads from the folder the command runs in."""
    from videdit.cli import _size

    table = presets() if preset_table is None else preset_table
    if s.preset not in (NO_PRESET, None, "") and s.preset not in table:
        raise VideditError(f"unknown preset {s.preset!r}; choose from {sorted(table)}")
    config = dict(table[s.preset].values) if s.preset in table else {}
    config.update(s.extra or {})
    config.pop("model", None)
    options = parse_options(s.options)
    if not (s.target or "").strip():
        raise VideditError("give a target prompt (what the edit should show)")
    config.update(model=model, source=s.source or "", target=s.target)
    if dtype != "fp32":
        config["dtype"] = dtype
    config.pop("inversion", None)
    if s.inversion not in (EDITORS_INVERSION, None, ""):
        config["inversion"] = s.inversion
    config["editor"] = s.editor or "plain"
    config.pop("mask", None)
    if mask is not None:
        if config["editor"] not in mask_editors():
            raise VideditError(f"editor {config['editor']!r} takes no mask; remove the mask or choose one of "
                               f"{', '.join(mask_editors())}")
        config["mask"] = mask
    for key in ("inversion_params", "editor_params"):
        config.pop(key, None)
        if options.get(key):
            config[key] = options[key]
    modules = list(s.temporal or [])
    given = options.get("temporal", {})
    stray = sorted(set(given) - set(modules))
    if stray:
        raise VideditError(f"options give temporal {', '.join(stray)}, which is not ticked under temporal modules; "
                           f"tick it or remove its options")
    config.pop("temporal", None)
    if modules:
        config["temporal"] = {m: given.get(m) or {} for m in modules}
    steps = _whole(s.steps, "steps", 0)
    if steps:
        config["steps"] = steps
    if s.guidance is not None and str(s.guidance).strip():
        try:
            config["guidance"] = float(s.guidance)
        except ValueError:
            raise VideditError(f"guidance must be a number, got {s.guidance!r}") from None
    config["seed"] = _whole(s.seed, "seed", 0) or 0
    for key in ("start_frame", "end_frame"):
        config.pop(key, None)
    start, end = _whole(s.start_frame, "first frame", 0) or 0, _whole(s.end_frame, "end frame", 0)
    if start:
        config["start_frame"] = start
    if end:
        if end <= start:
            raise VideditError(f"the end frame ({end}) must come after the first frame ({start})")
        config["end_frame"] = end
    if (s.size or "").strip():
        try:
            size = _size(s.size.strip())
        except argparse.ArgumentTypeError as e:
            raise VideditError(str(e)) from None
        config["size"] = size if not isinstance(size, tuple) else f"{size[0]}x{size[1]}"
    return config


def settings_of(config: dict) -> PageSettings:
    """The page's fields for a run's settings (a history entry, to run again with one change)."""
    return PageSettings(source=config.get("source", ""), target=config.get("target", ""), preset=NO_PRESET,
                        inversion=config.get("inversion", EDITORS_INVERSION), editor=config.get("editor", "plain"),
                        temporal=list(config.get("temporal") or {}), options=format_options(config),
                        steps=config.get("steps", 0), guidance=str(config.get("guidance", "")),
                        seed=config.get("seed", 0), start_frame=config.get("start_frame", 0),
                        end_frame=config.get("end_frame", 0),
                        size="" if config.get("size") is None else str(config["size"]),
                        extra={k: v for k, v in config.items() if k not in FIELD_KEYS})


def preset_settings(name: str, current: PageSettings, table: dict[str, Preset] | None = None) -> PageSettings:
    """The fields a preset fills (methods, their options, steps, guidance), the prompts and the
    frame range kept from ``current``."""
    table = presets() if table is None else table
    if name in (NO_PRESET, None, ""):
        return PageSettings(source=current.source, target=current.target, start_frame=current.start_frame,
                            end_frame=current.end_frame, size=current.size, seed=current.seed)
    values = table[name].values
    s = settings_of(values)
    s.preset, s.source, s.target, s.seed = name, current.source, current.target, current.seed
    s.start_frame, s.end_frame, s.size = current.start_frame, current.end_frame, current.size
    return s


def write_preset(path: Path, config: dict, run: int) -> Path:
    """The run's settings as a YAML preset, with the command that reproduces the run."""
    from videdit.io import atomic_path

    head = (f"# videdit serve, run {run}: reproduce it with\n"
            f"#   videdit edit INPUT -o OUT.mp4 --config {path.name}\n")
    if config.get("mask"):
        head += (f"# in the folder that holds this file and the mask {config['mask']} (the run's downloads),\n"
                 f"# or give the mask's path with --mask PATH\n")
    with atomic_path(path) as tmp:
        tmp.write_text(head + yaml.safe_dump(config, sort_keys=False, default_flow_style=None))
    return path


# --- uploads ---------------------------------------------------------------------------------------------------


def describe_clip(info) -> str:
    """One line: size, fps, frames, duration (and audio)."""
    w, h = info.source_size
    if info.kind == "image":
        return f"image, {w}x{h}"
    fps = float(info.out_fps or info.fps or 0)
    seconds = info.n_frames / fps if fps else 0
    return (f"{info.kind}, {w}x{h}, {fps:g} fps, {info.n_frames} frames, {seconds:.2f} s"
            + (", with audio" if info.has_audio else ""))


def _extract_frames(archive: Path, folder: Path, limits: Limits, name: str) -> Path:
    """The image files of a zip into ``folder`` (by base name only: no member can write elsewhere),
    refused where it holds none, too many, or more bytes unpacked than 4x the upload limit."""
    from videdit.io import IMAGE_SUFFIXES

    try:
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.infolist() if not m.is_dir() and Path(m.filename).suffix.lower()
                       in IMAGE_SUFFIXES and not Path(m.filename).name.startswith(".")
                       and "__MACOSX" not in m.filename]
            if not members:
                raise VideditError(f"{name} holds no image frames ({', '.join(IMAGE_SUFFIXES)})")
            if len(members) > limits.max_frames:
                raise VideditError(f"{name} holds {len(members)} frames, over this server's limit of "
                                   f"{limits.max_frames} (videdit serve --max-frames)")
            if sum(m.file_size for m in members) > 4 * limits.max_upload_mb * 1e6:
                raise VideditError(f"{name} unpacks to more than {4 * limits.max_upload_mb:g} MB")
            names = [Path(m.filename).name for m in members]
            if len(set(names)) != len(names):
                raise VideditError(f"{name} holds frames of the same name in several folders; zip one folder")
            folder.mkdir(parents=True)
            for m, base in zip(members, names):
                with z.open(m) as src, open(folder / base, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except zipfile.BadZipFile:
        raise VideditError(f"{name} is not a readable zip file") from None
    return folder


def accept_upload(path: Path, dest: Path, limits: Limits, name: str | None = None):
    """An uploaded file (a video, an image or a zip of frames) checked against ``limits`` and
    moved into ``dest`` (a new folder in the server's temporary folder): -> (clip path, ClipInfo).
    Every refusal is one line naming the upload, not the server's paths."""
    from videdit import io

    name = name or path.name
    suffix = Path(name).suffix.lower()
    size_mb = path.stat().st_size / 1e6
    if size_mb > limits.max_upload_mb:
        raise VideditError(f"{name} is {size_mb:.1f} MB, over this server's upload limit of "
                           f"{limits.max_upload_mb:g} MB (videdit serve --max-upload-mb)")
    if suffix not in (*VIDEO_SUFFIXES, *io.IMAGE_SUFFIXES, ".zip"):
        raise VideditError(f"{name}: upload a video ({', '.join(VIDEO_SUFFIXES)}), an image "
                           f"({', '.join(io.IMAGE_SUFFIXES)}) or a .zip of frames")
    dest.mkdir(parents=True, exist_ok=True)
    if suffix == ".zip":   # a fixed name: the upload's ("..zip", "a b.zip") names nothing on the server
        clip = _extract_frames(path, dest / "frames", limits, name)
    else:
        clip = dest / ("clip" + suffix)
        shutil.copyfile(path, clip)
    try:
        info = io.probe(clip)
    except VideditError as e:   # the upload's name, and what the page takes in place of a folder
        shutil.rmtree(dest, ignore_errors=True)
        raise VideditError(str(e).replace(str(clip), name).replace("a folder of frames", "a .zip of frames")) from None
    fps = float(info.out_fps or info.fps or 0)
    problem = None
    if info.n_frames > limits.max_frames:
        problem = (f"{name} has {info.n_frames} frames, over this server's limit of {limits.max_frames} "
                   f"(videdit serve --max-frames)")
    elif fps and info.n_frames / fps > limits.max_seconds:
        problem = (f"{name} lasts {info.n_frames / fps:.1f} s, over this server's limit of {limits.max_seconds:g} s "
                   f"(videdit serve --max-seconds)")
    if problem:
        shutil.rmtree(dest, ignore_errors=True)
        raise VideditError(problem)
    return clip, info


def mask_editors() -> list[str]:
    """The editors that take a mask (a ``mask`` option, which `videdit edit --mask` sets), from the
    registry: the page shows its mask upload for these only."""
    from dataclasses import fields

    from videdit.editing import EDITORS

    return sorted(n for n, spec in EDITORS.items() if "mask" in {f.name for f in fields(spec.config)})


def accept_mask(path: Path, dest: Path, limits: Limits, name: str | None = None):
    """An uploaded mask, as `videdit edit --mask` takes one (``editing.masks.mask_from_file``): an
    image (white = edit, black = keep; grey = partial) or a ``.npy`` map of values in [0, 1], one
    mask for every frame, read and checked here, and copied into ``dest`` -> (path, (w, h), one line).
    Every refusal is one line naming the upload, not the server's paths."""
    import cv2
    import numpy as np

    from videdit.editing.masks import MASK_SUFFIXES

    name = name or path.name
    suffix = Path(name).suffix.lower()
    if suffix not in MASK_SUFFIXES:
        raise VideditError(f"{name}: a mask is one image ({', '.join(s for s in MASK_SUFFIXES if s != '.npy')}) or a "
                           f".npy map for every frame (as videdit edit --mask takes), white = edit")
    size_mb = path.stat().st_size / 1e6
    if size_mb > limits.max_upload_mb:
        raise VideditError(f"{name} is {size_mb:.1f} MB, over this server's upload limit of "
                           f"{limits.max_upload_mb:g} MB (videdit serve --max-upload-mb)")
    if suffix == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            raise VideditError(f"{name} is not a readable .npy array") from None
        if not np.issubdtype(values.dtype, np.number) and values.dtype != bool:
            raise VideditError(f"{name} holds {values.dtype} values; a mask holds numbers in [0, 1]")
        values = np.asarray(values, dtype=np.float32)
        if values.ndim < 2 or values.ndim > 4 or any(n != 1 for n in values.shape[:-2]):
            raise VideditError(f"{name} is an array of shape {values.shape}; give one mask (h, w) for every frame "
                               f"(as videdit edit --mask takes)")
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise VideditError(f"{name} holds values in [{values.min():.3g}, {values.max():.3g}]; a mask holds "
                               f"values in [0, 1] (1 = edit, 0 = keep)")
        h, w = values.shape[-2:]
    else:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
        if image is None:
            raise VideditError(f"{name} is not a readable image")
        h, w = image.shape[:2]
        values = image
    kept = np.asarray(values, dtype=np.float32) / (float(np.iinfo(values.dtype).max)
                                                   if np.issubdtype(values.dtype, np.integer) else 1.0)
    dest.mkdir(parents=True, exist_ok=True)
    mask = dest / ("mask" + suffix)
    shutil.copyfile(path, mask)
    return mask, (w, h), f"mask {w}x{h}, {100 * float((kept >= 0.5).mean()):.0f}% to edit"


def check_mask_fits(mask_size: tuple[int, int], frame_size: tuple[int, int], name: str) -> None:
    """A mask's (w, h) against the frames' (w, h) as `videdit edit --mask` checks it (the aspect
    ratios within ``editing.masks.ASPECT_TOLERANCE``), in one line naming the upload."""
    from videdit.editing.masks import ASPECT_TOLERANCE

    (mw, mh), (fw, fh) = mask_size, frame_size
    if abs((mw / mh) / (fw / fh) - 1) > ASPECT_TOLERANCE:
        raise VideditError(f"the mask {name} is {mw}x{mh} but the frames are {fw}x{fh}: give a mask with the "
                           f"frames' aspect ratio (any size), or a working size WxH of the mask's")


# --- progress and cancel ---------------------------------------------------------------------------------------


@contextmanager
def watch_bars(callback: Callable[[Any], None]) -> Iterator[None]:
    """Call ``callback(bar)`` as every tqdm bar of this process starts and after each of its updates
    inside the block (the pipeline's frames, inversion and denoising bars, at most every 0.1 s each:
    tqdm's ``mininterval``); an exception the callback raises stops the work where the bar is
    (cancel). tqdm's own methods are back afterwards."""
    from tqdm import std

    saved = {k: vars(std.tqdm)[k] for k in ("__init__", "update")}   # as stored (tqdm's __init__ is a descriptor)
    original_init, original_update = std.tqdm.__init__, std.tqdm.update

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        callback(self)   # a new stage (a window's inversion, its denoising) starts

    def update(self, n=1):
        shown = original_update(self, n)
        callback(self)
        return shown

    std.tqdm.__init__, std.tqdm.update = init, update
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(std.tqdm, k, v)


@dataclass(frozen=True)
class Mask:
    """An uploaded mask on the server: its path, the name it was uploaded as, its (w, h)."""

    path: Path
    name: str
    size: tuple[int, int]


@dataclass
class Run:
    """One finished run of the page."""

    number: int
    config: dict
    output: Path
    preview: Path
    preset: Path
    report: dict
    message: str
    from_cache: bool
    mask: Mask | None = None    # the run's copy of its mask, beside its preset
    clip: Path | None = None    # the clip it edited (on the server)

    def downloads(self) -> list[Path]:
        """The video, its settings and the mask they name."""
        return [self.output, self.preset] + ([self.mask.path] if self.mask else [])


def torch_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count in the calling thread to ``n`` (None: leave it); -> the count.

    PyTorch keeps the count per OS thread once a thread has run an op: ``torch.set_num_threads`` in
    one thread does not reach a pool thread that has already run one (Gradio's workers), and CPU
    convolutions and matmuls sum in an order that depends on the count (measured on the toy model: the
    VAE encoder's and the UNet's outputs differ in ~60-95% of their floats, by ~1e-6, at 1 vs 2 threads).
    A page run at another count than the CLI's then differs in the odd uint8 value by 1, which x264 turns
    into 0.8% of the decoded values by up to 13 levels (the recolour preset on the sample, 4 steps). Not
    restored: the count set is the server's own."""
    import torch

    if n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


class Server:
    """The state of one server: its model (loaded once), its temporary folder, the runs."""

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "fp32", cache_dir: str | None = None,
                 limits: Limits = Limits(), root: Path | None = None):
        self.model_name, self.device, self.dtype, self.cache_dir, self.limits = model, device, dtype, cache_dir, limits
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="videdit-serve-"))
        if self.cache_dir is None:   # the inversions of the uploads go with them when the server stops
            self.cache_dir = str(self.root / "cache")
        self.model = None
        self.history: list[Run] = []
        self._lock = threading.Lock()          # one run at a time (and one model load)
        self._state = threading.Lock()         # guards the bookkeeping below
        self._runs: dict[Any, set] = {}        # a page (session) -> a ticket for each of its runs, waiting or on
        self._cancelled: set = set()           # the tickets of runs to stop
        self._uploads = 0
        self._names: dict[str, str] = {}       # an upload's path on the server -> its name as uploaded
        self._held: dict[tuple[Any, str], Path] = {}   # a page's upload folder of each kind ("clip", "mask")
        self._used: set[Path] = set()          # upload folders a run has read: the history may recall them
        self.threads = torch_threads()   # the count `videdit edit` gets here; every run uses it (see torch_threads)

    def load(self):
        from videdit.models import load_model

        with self._lock:
            if self.model is None:
                self.model = load_model(self.model_name, device=self.device, dtype=self.dtype)
        return self.model

    def _upload_folder(self, owner: Any, kind: str) -> Path:
        """A new folder for ``owner``'s (a page's) upload of ``kind`` ("clip" or "mask"). The page's
        previous one of that kind goes (its field now holds the new one, or none where the new one is
        refused) unless a run has read it, so that a page's uploads do not pile up on the server."""
        with self._state:   # two pages may upload at once: each gets its own folder
            self._uploads += 1
            folder = self.root / "uploads" / f"{self._uploads:03d}"
            old, self._held[(owner, kind)] = self._held.get((owner, kind)), folder
            stale = old is not None and old not in self._used
        if stale:
            self._remove_upload(old)
        return folder

    def _remove_upload(self, folder: Path) -> None:
        """An upload folder no run read goes, and the names its files were uploaded as."""
        shutil.rmtree(folder, ignore_errors=True)
        with self._state:
            self._names = {p: n for p, n in self._names.items() if not Path(p).is_relative_to(folder)}

    def _read_by_run(self, *paths: Path | None) -> None:
        """Uploads a run reads stay on the server (the history recalls its clip)."""
        uploads = self.root / "uploads"
        with self._state:
            self._used.update(uploads / Path(p).relative_to(uploads).parts[0] for p in paths
                              if p is not None and Path(p).is_relative_to(uploads))

    def forget(self, owner: Any) -> None:
        """A page closed: its uploads that no run read go."""
        with self._state:
            stale = [f for (o, _), f in self._held.items() if o == owner and f not in self._used]
            self._held = {k: f for k, f in self._held.items() if k[0] != owner}
        for folder in stale:
            self._remove_upload(folder)

    def upload(self, path: Path, name: str | None = None, owner: Any = None):
        """An upload (or the sample clip) into the server's folder: -> (clip path, one-line description).
        ``owner``: the page's session; its previous clip goes unless a run read it."""
        name = name or Path(path).name
        clip, info = accept_upload(Path(path), self._upload_folder(owner, "clip"), self.limits, name)
        self._names[str(clip)] = name
        return clip, describe_clip(info)

    def upload_mask(self, path: Path, name: str | None = None, owner: Any = None) -> tuple[Mask, str]:
        """A mask upload into the server's folder: -> (Mask, one-line description)."""
        mask, size, text = accept_mask(Path(path), self._upload_folder(owner, "mask"), self.limits, name)
        return Mask(mask, name or Path(path).name, size), text

    def sample(self, owner: Any = None):
        if not SAMPLE.exists():
            raise VideditError("the sample clip is not installed here (a source checkout has samples/)")
        return self.upload(SAMPLE, owner=owner)

    def cancel(self, owner: Any = None) -> str:
        """Stop ``owner``'s runs (a page's session; None: the caller of ``run`` without one), on or
        waiting for another's to end; another page's run goes on."""
        with self._state:
            tickets = self._runs.get(owner)
            if not tickets:
                return "nothing is running" if not self._lock.locked() else "nothing of this page's is running"
            self._cancelled |= tickets
        return "cancelling ..."

    def _stopped(self, ticket: object) -> bool:
        with self._state:
            return ticket in self._cancelled

    def _acquire(self, ticket: object, progress: Callable[[float, str], None]) -> None:
        """Take the run lock for the run of ``ticket``, saying that it waits while another page's run
        holds it; a cancel before it holds the lock stops it there."""
        said = False
        while not self._lock.acquire(timeout=0.2):
            if self._stopped(ticket):
                raise Cancelled("cancelled before it started; nothing was written")
            if not said:
                progress(0.0, "waiting: another page's run is on (one run at a time)")
                said = True
        if self._stopped(ticket):
            self._lock.release()
            raise Cancelled("cancelled before it started; nothing was written")

    def _done(self, owner: Any, ticket: object) -> None:
        """The run of ``ticket`` ended (done, failed or cancelled): its page's cancel no longer reaches it."""
        with self._state:
            self._cancelled.discard(ticket)
            tickets = self._runs.get(owner, set())
            tickets.discard(ticket)
            if not tickets:
                self._runs.pop(owner, None)

    def run(self, clip: Path | None, settings: PageSettings,
            progress: Callable[[float, str], None] = lambda fraction, text: None, mask: Mask | None = None,
            owner: Any = None) -> Run:
        """Edit ``clip`` with the page's settings (and ``mask``, for an editor that takes one): the
        output, its source|edit preview, its warp-error report and its YAML preset (and a copy of the
        mask it names) in a new folder of the server's; removed whole when the run fails or is
        cancelled (by ``owner``: the page's session). The run's arguments are those `videdit edit`
        parses from the preset (with ``--mask`` the mask's copy)."""
        from videdit import cli, io
        from videdit.metrics import evaluate_clips
        from videdit.pipeline import edit_video

        ticket = object()
        with self._state:   # from here a cancel of owner's reaches this run
            self._runs.setdefault(owner, set()).add(ticket)
        try:
            self._read_by_run(clip, mask.path if mask is not None else None)
            if clip is None:
                raise VideditError("upload a clip first (or use the sample clip)")
            if not Path(clip).exists():
                raise VideditError("the clip is no longer on the server; upload it again")
            if mask is not None and not mask.path.exists():
                raise VideditError("the mask is no longer on the server; upload it again")
            config = build_config(settings, model=self.model_name, dtype=self.dtype,
                                  mask=mask.name if mask is not None else None)
            if mask is not None:   # the frames' size as edited: the working size WxH, else the clip's
                size = config.get("size")
                check_mask_fits(mask.size, tuple(map(int, size.split("x"))) if isinstance(size, str) and "x" in size
                                else io.probe(clip).source_size, mask.name)
            self._acquire(ticket, progress)
        except BaseException:
            self._done(owner, ticket)
            raise
        try:
            torch_threads(self.threads)   # this worker thread's count may be another: the CLI's bits need this one
            number = len(self.history) + 1
            folder = self.root / "runs" / f"{number:03d}"
            folder.mkdir(parents=True)
            try:
                argv = []
                if mask is not None:   # its copy beside the preset, named by it; read through --mask
                    given, mask = mask, Mask(folder / f"run{number}-mask{mask.path.suffix}", mask.name, mask.size)
                    shutil.copyfile(given.path, mask.path)
                    config["mask"] = mask.path.name
                    argv = ["--mask", str(mask.path)]
                preset = write_preset(folder / f"run{number}.yaml", config, number)
                output, preview = folder / f"run{number}.mp4", folder / f"run{number}-compare.gif"
                try:
                    args = cli._with_config(cli.build_parser(), ["edit", str(clip), "-o", str(output), "--config",
                                                                 str(preset), "--preview", str(preview), "-q", *argv])
                except SystemExit:
                    raise VideditError("the settings do not parse as `videdit edit` options; see the server's log")
                kwargs = cli.edit_kwargs(args)
                kwargs["cache_dir"] = self.cache_dir
                kwargs.update(model=self.model if self.model is not None else self._load_locked(), progress=True)
                bars: dict[str, tuple[int, int]] = {}
                window = kwargs["window"]   # the preset's, else the command line's default

                def on_bar(bar) -> None:
                    if self._stopped(ticket):
                        raise Cancelled("cancelled; nothing was written")
                    desc = bar.desc or "work"
                    if desc == "frames" and bars.get("frames", (bar.n,))[0] != bar.n:
                        for stage in [k for k in bars if k != "frames"]:   # a window done: its stages' bars go
                            del bars[stage]
                    bars[desc] = (bar.n, bar.total or 0)
                    progress(done_fraction(bars, window), " · ".join(f"{d} {n}/{t}" for d, (n, t) in bars.items()))

                with watch_bars(on_bar):
                    result = edit_video(args.input, args.output, **kwargs)
                if self._stopped(ticket):
                    raise Cancelled("cancelled; nothing was written")
                progress(1.0, "scoring the warp error")
                report = evaluate_clips(args.input, result.output, read=cli._read_options(args))
                if self._stopped(ticket):   # cancelled while scoring (no bars there): the output goes too
                    raise Cancelled("cancelled; nothing was written")
            except VideditError as e:
                shutil.rmtree(folder, ignore_errors=True)
                text = page_words(str(e))   # the uploads' names, not the server's paths
                for path, name in ((mask.path, mask.name) if mask is not None else (None, None),
                                   (Path(clip), self._names.get(str(clip), Path(clip).name))):
                    if path is not None:
                        text = text.replace(str(path), name)
                text = text.replace(str(self.root), "the server's folder")
                log.info("run %d %s", number, "cancelled" if isinstance(e, Cancelled) else f"failed: {text}")
                if text != str(e):
                    raise type(e)(text) from None
                raise
            except BaseException as e:
                shutil.rmtree(folder, ignore_errors=True)
                log.info("run %d failed: %s", number, type(e).__name__)
                raise
            s = result.stats
            from_cache = s.cache_hits > 0
            message = (f"run {number}: {s.frames} frames, worked at {s.size[0]}x{s.size[1]}, written at "
                       f"{result.info.source_size[0]}x{result.info.source_size[1]}; inversion "
                       + (f"from cache ({s.cache_hits}/{s.windows} windows)" if from_cache
                          else f"{s.seconds['invert']:.1f} s") + f", edit {s.seconds['edit']:.1f} s")
            log.info("%s; warp error ratio %.2f", message, report["warp_error_ratio"])
            run = Run(number, config, result.output, preview, preset, report, message, from_cache, mask, Path(clip))
            self.history.append(run)   # under the lock: the next run's number follows
            return run
        finally:
            self._done(owner, ticket)
            self._lock.release()

    def recall(self, number: int) -> tuple[Path | None, PageSettings, Mask | None]:
        """Run ``number``'s clip, page fields and mask, to run again with one change (the history's
        "load its settings"): the same settings give the same preset (``build_config``), and an
        inversion the cache holds is reused where only the target prompt or the editor changed."""
        for r in self.history:
            if r.number == number:
                return r.clip, settings_of(r.config), r.mask
        raise VideditError(f"no run {number} on this server (runs: {', '.join(str(r.number) for r in self.history)})")

    def _load_locked(self):
        from videdit.models import load_model

        self.model = load_model(self.model_name, device=self.device, dtype=self.dtype)
        return self.model

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def done_fraction(bars: dict[str, tuple[int, int]], window: int) -> float:
    """The share of a run done, from its bars' (n, total): the frames written, and of the window being
    worked (``window`` frames, or those left) the mean share of its stages' bars (inversion, denoising)."""
    n, total = bars.get("frames", (0, 0))
    if not total:
        return 0.0
    stages = [k / t for d, (k, t) in bars.items() if d != "frames" and t]
    inner = sum(stages) / len(stages) if stages else 0.0
    done = min(1.0, (n + inner * min(window, total - n)) / total)
    return min(done, 0.99) if any(f < 1 for f in stages) else done   # a second pass after the frames: not done


def page_words(text: str) -> str:
    """A pipeline message in the page's words where it names command-line flags the page has as fields."""
    text = re.sub(r"use --size (\d+) or less", r"use a working size of \1 or less", text)
    return re.sub(r"raise the budget with --max-tokens (\d+) \(or \$(\w+)\)",
                  r"raise the budget with $\2=\1 where the server is started", text)


def report_text(report: dict) -> str:
    """The warp-error report, as `videdit eval` prints it."""
    return (f"warp error {report['warp_error']:.3f} (source {report['source_warp_error']:.3f}, ratio "
            f"{report['warp_error_ratio']:.2f}), flicker {report['flicker']:.3f} over {report['frames']} frames at "
            f"{report['size'][0]}x{report['size'][1]} ([0, 255] units)")


def one_line(e: BaseException) -> str:
    """An error as the page shows it: one line."""
    if isinstance(e, VideditError):
        text = str(e)
    elif type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower():
        text = "out of memory: lower the working size, the frames or the window, then run again"
    else:
        text = f"{type(e).__name__}: {e} (the server's log has the details)"
    return "error: " + " ".join(text.split())


# --- the page ----------------------------------------------------------------------------------------------------


def build_page(server: Server):
    """The Gradio Blocks of the page, over ``server``."""
    import gradio as gr

    from videdit.editing.masks import MASK_SUFFIXES

    entries = method_entries()
    by_kind: dict[str, list[str]] = {}
    for e in entries:
        by_kind.setdefault(e.kind, []).append(e.name)
    from videdit.cli import method_registries

    inv_kind, ed_kind, tm_kind = (title for title, _ in method_registries())
    table = presets()
    choices = [NO_PRESET] + [f"{p.name}" for p in table.values()]

    def with_request(fn):
        """``fn`` with its ``request`` parameter typed gr.Request, which is how Gradio knows to pass the
        page's session: this module's annotations are strings naming a gr imported here, not a global."""
        fn.__annotations__["request"] = gr.Request
        return fn

    with gr.Blocks(title="videdit") as page:
        clip = gr.State(None)          # the clip's path on the server: never sent by the browser
        applied = gr.State(NO_PRESET)  # the preset whose values the fields were last given
        mask = gr.State(None)          # the uploaded mask (a Mask: its path stays on the server)
        takers = mask_editors()
        gr.Markdown("# videdit\nText-guided video editing with diffusion models: upload a clip, give two prompts, "
                    f"pick a preset, run. Model: `{server.model_name}`.")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="clip: a video, an image or a .zip of frames", elem_id="upload",
                                 file_types=[*VIDEO_SUFFIXES, ".png", ".jpg", ".jpeg", ".bmp", ".webp", ".zip"])
                sample = gr.Button(f"use the sample clip ({SAMPLE.name})", elem_id="sample",
                                   visible=SAMPLE.exists(), size="sm")
                clip_info = gr.Markdown("no clip yet", elem_id="clip-info")
                source = gr.Textbox(label="source prompt (what the clip shows)", elem_id="source")
                target = gr.Textbox(label="target prompt (what the edit should show)", elem_id="target")
                preset = gr.Dropdown(choices, value=NO_PRESET, label="preset (configs/)", elem_id="preset")
                preset_info = gr.Markdown("", elem_id="preset-info")
                with gr.Group(visible=False) as mask_group:   # shown for the editors that take a mask
                    mask_upload = gr.File(label="mask (white = edit, black = keep): an image or a .npy map, one "
                                          "for every frame, as videdit edit --mask takes", elem_id="mask",
                                          file_types=list(MASK_SUFFIXES))
                    mask_info = gr.Markdown("no mask: the editor's own (or none)", elem_id="mask-info")
                with gr.Row():
                    # no precision: a fraction reaches the settings, which refuse it in one line
                    steps = gr.Number(0, label="steps (0: the method's)", elem_id="steps")
                    guidance = gr.Textbox("", label="guidance (empty: the method's)", elem_id="guidance")
                    seed = gr.Number(0, label="seed", elem_id="seed")
                with gr.Row():
                    start_frame = gr.Number(0, label="first frame", elem_id="start-frame")
                    end_frame = gr.Number(0, label="end frame (0: to the end)", elem_id="end-frame")
                    size = gr.Textbox("", label="working size (N, WxH, source; empty: the model's)",
                                      elem_id="size")
                with gr.Accordion("advanced: methods and their options", open=False, elem_id="advanced"):
                    inversion = gr.Dropdown([EDITORS_INVERSION] + by_kind[inv_kind], value=EDITORS_INVERSION,
                                            label="inversion", elem_id="inversion")
                    editor = gr.Dropdown(by_kind[ed_kind], value="plain", label="editor", elem_id="editor")
                    temporal = gr.Dropdown(by_kind[tm_kind], value=[], multiselect=True,
                                           label="temporal modules", elem_id="temporal")
                    options = gr.Code(format_options({}), language="yaml", label="options", elem_id="options")
                    reference = gr.Markdown(options_reference(entries, {ed_kind: ["plain"]}), elem_id="reference")
                with gr.Row():
                    run_button = gr.Button("run", variant="primary", elem_id="run")
                    cancel_button = gr.Button("cancel", variant="stop", elem_id="cancel")
                status = gr.Markdown("", elem_id="status")
            with gr.Column():
                result = gr.Video(label="result (with the source's audio)", elem_id="result", format=None)
                compare = gr.Image(label="source | edit", elem_id="compare", type="filepath", height=160)
                report = gr.Markdown("", elem_id="report")
                downloads = gr.File(label="downloads: the video and its settings (videdit edit --config)",
                                    file_count="multiple", elem_id="downloads")
        with gr.Accordion("runs since the server started", open=True):
            gallery = gr.Gallery(label="history (source | edit)", columns=6, rows=1, height=140, object_fit="contain",
                                 elem_id="history")
            with gr.Row():
                pick = gr.Dropdown([], label="run", elem_id="history-pick")
                load_run = gr.Button("load its settings", elem_id="history-load", size="sm")

        extra = gr.State({})   # the settings no field shows (a preset's or a recalled run's), server-side
        fields = [source, target, preset, inversion, editor, temporal, options, steps, guidance, seed,
                  start_frame, end_frame, size, extra]

        def settings_from(values) -> PageSettings:
            return PageSettings(*values)

        def as_fields(s: PageSettings) -> list:
            return [s.source, s.target, s.preset, s.inversion, s.editor, s.temporal, s.options, s.steps, s.guidance,
                    s.seed, s.start_frame, s.end_frame, s.size, s.extra]

        @with_request
        def on_mask(file, clip_path, request: gr.Request):
            if file is None:
                return None, "no mask: the editor's own (or none)", ""
            try:
                given, text = server.upload_mask(Path(file), Path(file).name, owner=request.session_hash)
                if clip_path is not None:
                    from videdit import io

                    check_mask_fits(given.size, io.probe(clip_path).source_size, given.name)
                return given, text, ""
            except Exception as e:   # noqa: BLE001: one line in the page, the server keeps serving
                return None, "no mask: the editor's own (or none)", one_line(e)

        def on_editor(ed):
            return gr.update(visible=ed in takers)

        @with_request
        def on_upload(file, request: gr.Request):
            if file is None:
                return None, "no clip yet", ""
            try:
                path, text = server.upload(Path(file), Path(file).name, owner=request.session_hash)
                return path, text, ""
            except Exception as e:   # noqa: BLE001: one line in the page, the server keeps serving
                return None, "no clip yet", one_line(e)

        @with_request
        def on_sample(request: gr.Request):
            try:
                path, text = server.sample(owner=request.session_hash)
                return path, text, ""
            except Exception as e:   # noqa: BLE001
                return None, "no clip yet", one_line(e)

        def on_preset(name, applied, *values):
            if name == applied:   # the dropdown's events repeat (selection, blur): fill the fields once
                return [gr.update() for _ in fields] + [gr.update(), applied]
            s = preset_settings(name, settings_from(values))
            about = table[name].description if name in table else ""
            return [*as_fields(s), about, name]

        def on_methods(inv, ed, tm):
            names = {inv_kind: [] if inv == EDITORS_INVERSION else [inv], ed_kind: [ed], tm_kind: list(tm or [])}
            return options_reference(entries, names)

        @with_request
        def on_run(path, given, request: gr.Request, *values, progress=gr.Progress()):   # Gradio adds request
            # the last run's answer and outputs go as this one starts: what shows next is this run's
            yield ["running ...", None, None, "", None, gr.update(), gr.update()]
            s = settings_from(values)
            try:   # a mask left from an editor that took one goes to none that does not (its upload is hidden)
                run = server.run(path, s, lambda f, text: progress(f, desc=text),
                                 mask=given if s.editor in takers else None, owner=request.session_hash)
            except Exception as e:   # noqa: BLE001: a bad option, a cancel, out of memory: one line, keep serving
                if not isinstance(e, VideditError):
                    log.exception("run failed")
                yield [one_line(e) if not isinstance(e, Cancelled) else str(e), None, None, "", None, gr.update(),
                       gr.update()]
                return
            yield [f"done: {run.message}", str(run.output), str(run.preview), report_text(run.report),
                   [str(p) for p in run.downloads()], *history()]

        def history():
            """The gallery and the run picker: every run since the server started (any page's)."""
            runs = [f"run {r.number}" for r in server.history]
            return ([(str(r.preview), f"run {r.number}: {r.config.get('target', '')}") for r in server.history],
                    gr.update(choices=runs, value=runs[-1] if runs else None))

        def on_load(name):
            try:
                number = int(str(name).removeprefix("run "))
                path, s, given = server.recall(number)
            except (ValueError, VideditError) as e:
                return [gr.update() for _ in fields] + [gr.update()] * 5 + [one_line(e) if name else ""]
            from videdit import io

            about = f"mask {given.name} (run {number}'s)" if given else "no mask: the editor's own (or none)"
            return [*as_fields(s), given, about, path, describe_clip(io.probe(path)), NO_PRESET,
                    f"run {number}'s settings" + (f" (and {', '.join(f'{k}={v}' for k, v in s.extra.items())})"
                                                  if s.extra else "") + ": change one and run again"]

        upload.upload(on_upload, [upload], [clip, clip_info, status])
        sample.click(on_sample, None, [clip, clip_info, status])
        preset.input(on_preset, [preset, applied, *fields], [*fields, preset_info, applied])
        for d in (inversion, editor, temporal):
            d.change(on_methods, [inversion, editor, temporal], [reference])
        editor.change(on_editor, [editor], [mask_group])
        mask_upload.upload(on_mask, [mask_upload, clip], [mask, mask_info, status])
        mask_upload.clear(lambda: (None, "no mask: the editor's own (or none)"), None, [mask, mask_info])
        # the runs enter the server, which runs one at a time and says when one waits for another's; past
        # WAITING of them Gradio's queue holds the rest (its worker threads stay free for uploads and cancels)
        run_button.click(on_run, [clip, mask, *fields], [status, result, compare, report, downloads, gallery, pick],
                         concurrency_limit=WAITING + 1, concurrency_id="run")

        @with_request
        def on_cancel(request: gr.Request):   # this page's run only
            gr.Info(server.cancel(request.session_hash))   # a note; the run's own answer says "cancelled"

        @with_request
        def on_close(request: gr.Request):   # a page closed: its run, waiting or on, is not wanted
            server.cancel(request.session_hash)
            server.forget(request.session_hash)
        page.unload(on_close)

        cancel_button.click(on_cancel, None, None, queue=False)
        page.load(history, None, [gallery, pick])
        load_run.click(on_load, [pick], [*fields, mask, mask_info, clip, clip_info, applied, status])
    return page


def serve(model: str, *, host: str = "127.0.0.1", port: int = 7860, device: str = "auto", dtype: str = "fp32",
          cache_dir: str | None = None, max_upload_mb: float = 200, max_seconds: float = 60,
          max_frames: int = 600) -> None:
    """Load ``model``, serve the page on ``host``:``port`` until interrupted, then remove the
    server's temporary folder (uploads, outputs, Gradio's own cache)."""
    server = Server(model, device=device, dtype=dtype, cache_dir=cache_dir,
                    limits=Limits(max_upload_mb, max_seconds, max_frames))
    os.environ["GRADIO_TEMP_DIR"] = str(server.root / "gradio")   # read as Gradio loads: its uploads go there too
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio   # checked before any work
    except ImportError:
        server.close()
        raise VideditError(INSTALL_HINT) from None
    log.info("Gradio %s", gradio.__version__)

    def stop(signum, frame):
        raise KeyboardInterrupt

    # a stop, or the terminal closing (SIGHUP, where there is one), removes the folder as Ctrl-C does
    signals = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {sig: signal.signal(sig, stop) for sig in signals}
    page = None
    try:
        log.info("loading %s", model)
        server.load()
        page = build_page(server)
        page.queue(default_concurrency_limit=1)
        log.info("serving on http://%s:%d (temporary folder %s)", host, port, server.root)
        page.launch(server_name=host, server_port=port, max_file_size=f"{max_upload_mb:g}mb", ssr_mode=False,
                    show_error=False, quiet=False, footer_links=[])
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if page is not None:
            page.close()
        server.close()
