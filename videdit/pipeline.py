"""edit_image / edit_video: read -> encode -> invert -> edit -> decode -> write.

Clips stream through in windows of frames (``window``): each window is encoded, inverted
(through the on-disk cache), edited and decoded before the next is read, so memory does
not grow with the clip's length.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import numbers
import os
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch

from videdit import io
from videdit.attention import attention_processors, merge, module_hooks
from videdit.attention.tome import TokenMerging, token_merging, token_merging_options
from videdit.config import make_config
from videdit.control.controlnet import Control, ControlFrames, resolve_control
from videdit.core.conditioning import unet_inputs
from videdit.core.deepcache import NO_CONTROLNET, FeatureCaching, feature_caching, feature_caching_options
from videdit.core.loop import Branches, PinnedBranch, denoise, overrides
from videdit.core.schedule import Schedule, check_steps_offset, make_schedule
from videdit.editing import EDITORS, EditContext, EditorSpec, EditPlan, get_editor
from videdit.errors import VideditError
from videdit.metrics.work import stage
from videdit.progress import progress_bar
from videdit.registry import EDIT_DEFAULTS
from videdit.inversion import (INVERSIONS, Inversion, InversionCache, InversionInputs, InversionMethod, Replay,
                               ReplayContext, get_inversion)
from videdit.inversion.cache import cache_key
from videdit.inversion.registry import ddim_replay
from videdit.io.options import resized_size
from videdit.models import DEFAULT_MODEL, Model, load_model, unet_dtype
from videdit.models.loading import Geometry, peek_geometry, resolve_device, resolve_dtype
from videdit.video import TemporalContext, TemporalSpec, TemporalStack, Window, WindowLatents, get_temporal
from videdit.video.keep_background import keep_background_options

log = logging.getLogger("videdit")
DEFAULT_INVERSION = "ddim"   # where neither the edit nor its editor names one
SOURCE_ONLY = "sdedit"       # where the editor reads only the clean source latents (EditorSpec.reads_inversion)
MAX_TOKENS_ENV = "VIDEDIT_MAX_TOKENS"   # the token budget when max_tokens is not given (default: the model's)


@dataclass(frozen=True)
class EditSettings:
    """One edit: prompts, sampler, and the inversion, editor and temporal modules with their
    options. Built once per edit (CLI, YAML and Python alike) and validated then: the
    methods' configs are resolved here and read from here, never rebuilt."""

    source_prompt: str = ""
    target_prompt: str = ""
    negative_prompt: str = ""
    steps: int | None = None       # None: the editor's reference value, else the inversion's, else 50
    guidance: float | None = None  # None: likewise, else 7.5
    seed: int = 0
    batch_size: int = 8          # frames per UNet call
    inversion: str | None = None   # None: the editor's (EditorSpec.inversion), else DEFAULT_INVERSION
    inversion_params: Mapping[str, Any] = field(default_factory=dict)
    editor: str = "plain"
    editor_params: Mapping[str, Any] = field(default_factory=dict)
    inversion_dtype: str = "model"  # "fp32": invert with the UNet cast to fp32; the edit keeps the model's dtype
    temporal: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # video modules -> their options
    keep_background: Mapping[str, Any] | None = None  # KeepBackground options: source pixels where latents kept
    strength: float | None = None  # invert and edit the last int(steps * strength) steps; None: as steps, else 1
    steps_offset: int | None = None  # shifts the timesteps (diffusers' key); None: as steps, else the model config's
    source_branch: str | None = None  # "replay" or "pinned" (to the inversion's latents); None: the editor's default
    token_merging: Mapping[str, Any] | float | None = None  # TokenMerging options or a ratio (tomesd); None: off
    feature_cache: Mapping[str, Any] | int | None = None  # FeatureCaching options or an interval (DeepCache); None: off
    # resolved from the fields above in __post_init__
    inversion_method: InversionMethod = field(init=False, repr=False, compare=False)
    inversion_config: Any = field(init=False, repr=False, compare=False)
    editor_spec: EditorSpec = field(init=False, repr=False, compare=False)
    editor_config: Any = field(init=False, repr=False, compare=False)
    temporal_configs: tuple[tuple[TemporalSpec, Any], ...] = field(init=False, repr=False, compare=False)
    start_step: int = field(init=False, repr=False, compare=False)      # the edit's first schedule step
    # the editor reads only the clean source latents (EditorSpec.reads_inversion): SOURCE_ONLY in place of the
    # inversion, and any inversion's record serves the edit
    source_only: bool = field(init=False, repr=False, compare=False)
    pin_source: bool = field(init=False, repr=False, compare=False)     # source branch on the inversion's latents
    token_merging_config: TokenMerging | None = field(init=False, repr=False, compare=False)
    feature_cache_config: FeatureCaching | None = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        editor = get_editor(self.editor)
        if self.inversion is None:
            object.__setattr__(self, "inversion", editor.inversion or DEFAULT_INVERSION)
        elif editor.inversion is not None and self.inversion != editor.inversion:
            raise VideditError(f"editor {editor.name!r} starts from inversion {editor.inversion!r}, as its reference "
                               f"does; leave the inversion out (got {self.inversion!r})")
        method = get_inversion(self.inversion)
        for name in EDIT_DEFAULTS:   # the reference's, where the edit leaves them unset
            if getattr(self, name) is None:
                object.__setattr__(self, name, next(
                    (spec.edit_defaults[name] for spec in (editor, method) if name in spec.edit_defaults),
                    EDIT_DEFAULTS[name]))
        for name in ("source_prompt", "target_prompt", "negative_prompt"):
            if not isinstance(getattr(self, name), str):
                raise VideditError(f"{name} must be one string, got {type(getattr(self, name)).__name__} "
                                   f"{getattr(self, name)!r}; edit once per prompt")
        whole, number = (numbers.Integral, "a whole number"), (numbers.Real, "a number")   # numpy's pass too
        for name, (kind, what) in {"steps": whole, "seed": whole, "batch_size": whole, "guidance": number,
                                   "strength": number}.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise VideditError(f"{name} must be {what}, got {value!r}")
        if self.steps < 1 or self.steps > 1000:
            raise VideditError(f"steps must be in [1, 1000], got {self.steps}")
        if not 0 <= self.guidance <= 50:
            raise VideditError(f"guidance must be in [0, 50], got {self.guidance}")
        if self.batch_size < 1:
            raise VideditError(f"batch size must be >= 1, got {self.batch_size}")
        if self.inversion_dtype not in ("model", "fp32"):
            raise VideditError(f"inversion_dtype must be 'model' (the model's dtype) or 'fp32', "
                               f"got {self.inversion_dtype!r}")
        config = make_config(method.config, self.inversion_params, f"inversion {self.inversion!r}")
        if getattr(config, "guidance", 0) is None:   # exact at the guidance it inverted at: the edit's
            config = dataclasses.replace(config, guidance=self.guidance)
        if self.source_branch not in (None, "replay", "pinned"):
            raise VideditError(f"source_branch must be 'replay' or 'pinned', got {self.source_branch!r}")
        if self.source_branch is not None and not editor.has_source_branch:
            raise VideditError(f"source_branch={self.source_branch!r} sets the editor's source branch, and editor "
                               f"{editor.name!r} runs none; use one of {EDITORS.having('has_source_branch')}")
        check_steps_offset(self.steps_offset)
        pin_source = editor.pinned_source if self.source_branch is None else self.source_branch == "pinned"
        if pin_source and method.pinned_config is not None:   # the same edit, less work
            config = method.pinned_config(config)
        if method.needs_source_branch is not None and method.needs_source_branch(config) \
                and not editor.has_source_branch:
            raise VideditError(f"inversion {method.name!r} with these options works on the editor's source branch, "
                               f"and editor {editor.name!r} runs none; use one of "
                               f"{EDITORS.having('has_source_branch')}, or the inversion's default options")
        missing = [r for r in editor.reads if r not in method.stores]
        if missing:
            raise VideditError(f"editor {editor.name!r} reads the {', '.join(missing)} an inversion stores, and "
                               f"inversion {method.name!r} stores none; use --inversion "
                               f"{' or '.join(n for n, m in INVERSIONS.items() if set(editor.reads) <= set(m.stores))}")
        editor_config = make_config(editor.config, self.editor_params, f"editor {self.editor!r}")
        # the plan reads only the clean source latents (its reference starts from its own noise), and the named
        # inversion's replay would be plain DDIM sampling (one with its own sampler, embeddings or callbacks runs)
        source_only = (editor.reads_inversion is not None and not editor.reads_inversion(editor_config)
                       and method.replay is ddim_replay)
        if source_only:
            method = get_inversion(SOURCE_ONLY)
            config = make_config(method.config, {}, f"inversion {SOURCE_ONLY!r}")
        resolved = {"inversion_method": method, "inversion_config": config, "editor_spec": editor,
                    "editor_config": editor_config, "source_only": source_only,
                    "temporal_configs": self._temporal_configs(editor),
                    "start_step": self._start_step(),
                    "pin_source": pin_source,
                    "token_merging_config": (None if self.token_merging is None else make_config(
                        TokenMerging, token_merging_options(self.token_merging), "token merging")),
                    "feature_cache_config": (None if self.feature_cache is None else make_config(
                        FeatureCaching, feature_caching_options(self.feature_cache), "deepcache"))}
        for name, value in resolved.items():
            object.__setattr__(self, name, value)
        self.temporal_stack()   # the modules find the ones they build on, or say which is missing

    def _start_step(self) -> int:
        """The schedule step the edit starts at: N - int(N * strength), as diffusers counts it."""
        strength = self.strength
        if not 0 < strength <= 1:
            raise VideditError(f"strength must be in (0, 1], got {strength}")
        start = self.steps - int(self.steps * strength)
        if start >= self.steps:
            raise VideditError(f"strength {strength} of {self.steps} steps leaves no step to run; "
                               f"raise strength or steps")
        return start

    def schedule(self, scheduler_config: dict) -> Schedule:
        """The edit's and the inversion's schedule on a model with ``scheduler_config``: DDIM's, or
        the one the editor's reference samples on (``EditorSpec.schedule``)."""
        return (self.editor_spec.schedule or make_schedule)(scheduler_config, self.steps, self.steps_offset)

    def _temporal_configs(self, editor: EditorSpec) -> tuple[tuple[TemporalSpec, Any], ...]:
        entries = [(n, p) for name, params in self.temporal.items()
                   for n, p in get_temporal(name).module_class.expand(params or {})]
        if self.keep_background is not None:
            entries.append(("keep_background", self.keep_background))
        names = [n for n, _ in entries]
        if len(set(names)) != len(names):
            raise VideditError(f"temporal modules {sorted({n for n in names if names.count(n) > 1})} are given twice; "
                               f"give each once with all its options")
        out = []
        for name, params in entries:
            spec = get_temporal(name)
            if spec.module_class.needs_source_branch and not editor.has_source_branch:
                raise VideditError(f"temporal module {name!r} reads the editor's source branch, and editor "
                                   f"{editor.name!r} runs none; use one of {EDITORS.having('has_source_branch')}")
            out.append((spec, make_config(spec.config, params, f"temporal module {name!r}")))
        return tuple(out)

    def temporal_stack(self) -> TemporalStack:
        """New instances of the temporal modules, for one edit of one clip."""
        return TemporalStack([spec.module_class(config) for spec, config in self.temporal_configs])


@dataclass
class EditStats:
    frames: int = 0
    windows: int = 0
    cache_hits: int = 0
    inversion_unet_evals: int = 0   # per frame, summed over windows
    size: tuple[int, int] | None = None   # (W, H) the model worked at (working_size)
    # wall time by phase; "compile": the calls that compiled (--compile), taken out of the phase they fell in
    seconds: dict[str, float] = field(default_factory=lambda: {"invert": 0.0, "edit": 0.0, "compile": 0.0})


class Stopwatch:
    """Wall time into an edit's :class:`EditStats` phase by phase, the seconds ``model`` spent
    compiling in each (``--compile``) counted apart: ``lap(stats, phase)`` charges the time since
    the last lap (or since it was made)."""

    def __init__(self, model: Model):
        self.model = model
        self.wall, self.compiling = time.perf_counter(), self._compiled()

    def _compiled(self) -> float:
        clock = self.model.compile_clock
        return clock.seconds if clock is not None else 0.0

    def lap(self, stats: EditStats, phase: str) -> None:
        wall, compiling = time.perf_counter(), self._compiled()
        stats.seconds[phase] += (wall - self.wall) - (compiling - self.compiling)
        stats.seconds["compile"] += compiling - self.compiling
        self.wall, self.compiling = wall, compiling


@dataclass
class EditResult:
    output: Path | None
    frames: np.ndarray | None   # (F, H, W, 3) uint8 when no output path was given
    info: io.ClipInfo | None
    stats: EditStats


def model_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """The nearest size the model takes (both sides a multiple of the VAE factor, >= one)."""
    return (max(multiple, int(round(width / multiple)) * multiple),
            max(multiple, int(round(height / multiple)) * multiple))


def working_size(model: Model | Geometry, source: tuple[int, int],
                 size: int | tuple[int, int] | str | None) -> tuple[int, int]:
    """(W, H) the model works at for a source of (W, H): ``size`` None -> the model's native
    short side (``Model.native_size``), "source" -> the source's own size, an int -> that short
    side, (W, H) -> that; then both sides to the nearest multiple of the VAE's factor
    (:func:`model_size`). E.g. 1920x1080 on SD 1.5 -> 910x512 -> 912x512."""
    w, h = resized_size(source, model.native_size if size is None else size)
    return model_size(w, h, model.vae_scale_factor)


def token_budget(model: Model | Geometry, max_tokens: int | None = None) -> int:
    """The most latent tokens (h x w) per frame an edit may work at: ``max_tokens``, else
    $VIDEDIT_MAX_TOKENS, else the model's default (``Model.token_budget``, 4x its native square's)."""
    where = "max_tokens"
    if max_tokens is None and os.environ.get(MAX_TOKENS_ENV, "").strip():
        where, max_tokens = MAX_TOKENS_ENV, os.environ[MAX_TOKENS_ENV].strip()
        try:
            max_tokens = int(max_tokens)
        except ValueError:
            raise VideditError(f"{MAX_TOKENS_ENV}={max_tokens!r} is not a whole number of latent tokens per "
                               f"frame; unset it or give e.g. {model.token_budget}") from None
    if max_tokens is None:
        return model.token_budget
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise VideditError(f"{where} must be a whole number of latent tokens per frame >= 1, got {max_tokens!r}")
    return max_tokens


def check_budget(model: Model | Geometry, source: tuple[int, int], size: int | tuple[int, int] | str | None,
                 max_tokens: int | None = None) -> tuple[int, int]:
    """The working (W, H) of a source of (W, H) at ``size`` (:func:`working_size`), or, where its
    latent tokens per frame exceed the budget (:func:`token_budget`), one line naming the
    figure, the memory it costs and the ``--size`` that fits. Called before any frame is read."""
    work = working_size(model, source, size)
    f = model.vae_scale_factor
    tokens = (work[0] // f) * (work[1] // f)
    budget = token_budget(model, max_tokens)
    if tokens <= budget:
        return work
    fits = min(work) // f * f
    while fits > f and math.prod(s // f for s in working_size(model, work, fits)) > budget:
        fits -= f
    scores = tokens ** 2 * torch.finfo(model.dtype).bits / 8 / 2 ** 30   # one head's (tokens, tokens) scores
    raise VideditError(
        f"working at {work[0]}x{work[1]} is {work[0] // f}x{work[1] // f} = {tokens} latent tokens per frame "
        f"(self-attention scores {scores:.1f} GiB per head per frame in {str(model.dtype).removeprefix('torch.')}), "
        f"over the budget of {budget}; use --size {fits} or less ({model.name}'s native short side is "
        f"{model.native_size}), or raise the budget with --max-tokens {tokens} (or ${MAX_TOKENS_ENV})")


def _at_working_size(model: Model, read: io.ReadOptions, info: io.ClipInfo,
                     max_tokens: int | None) -> tuple[io.ReadOptions, io.ClipInfo, tuple[int, int]]:
    """A clip's read options and info with the working size resolved (``read.size`` None: the
    model's native short side), and the (W, H) the model works at; refused over the budget."""
    size, work = _working(model, info.source_size, read.size, max_tokens)
    read = dataclasses.replace(read, size=size)
    info = dataclasses.replace(info, size=resized_size(info.source_size, size))
    return read, info, work


def _working(model: Model, source: tuple[int, int], size: int | tuple[int, int] | str | None,
             max_tokens: int | None) -> tuple[int | tuple[int, int] | str, tuple[int, int]]:
    """``size`` resolved (None: the model's native short side) and the (W, H) the model works at
    for a source of (W, H), refused over the budget (:func:`check_budget`)."""
    size = model.native_size if size is None else size
    work = check_budget(model, source, size, max_tokens)
    log.info("working at %dx%d (source %dx%d; --size changes it)", *work, *source)
    return size, work


def _at_model_size(model: Model, frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) uint8 frames resized to the size the model works at (:func:`model_size`)."""
    height, width = frames.shape[1:3]
    return _resize(frames, model_size(width, height, model.vae_scale_factor))


def _resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, size[1], size[0], 3)."""
    if frames.shape[2] == size[0] and frames.shape[1] == size[1]:
        return frames
    shrink = size[0] * size[1] < frames.shape[1] * frames.shape[2]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, size, interpolation=interp) for f in frames])


def _resolve_model(model: Model | str, device, dtype, settings: EditSettings, source: tuple[int, int] | None = None,
                   size: int | tuple[int, int] | str | None = None, max_tokens: int | None = None) -> Model:
    """``model`` loaded (a Model is itself) and checked to run the settings' methods
    (:func:`check_methods`). With the ``source`` (W, H), a request over the memory budget is
    refused first, from the model's configs alone where they can be read without its weights
    (:func:`~videdit.models.loading.peek_geometry`): before gigabytes download or load."""
    if not isinstance(model, Model):
        if source is not None and (geometry := peek_geometry(model, dtype)) is not None:
            check_budget(geometry, source, size, max_tokens)
        model = load_model(model, device=device, dtype=dtype)
    else:
        _check_loaded(model, device, dtype)
    check_methods(model, settings)
    return model


def _check_loaded(model: Model, device, dtype) -> None:
    """Refuse a ``device`` or ``dtype`` that a loaded ``model`` does not have (they choose how a
    model loads; "auto" and None leave it as loaded)."""
    def index(d: torch.device) -> int:   # "cuda" is the current GPU
        return d.index if d.index is not None else (torch.cuda.current_device() if d.type == "cuda" else 0)

    if device is not None and str(device) != "auto":
        want = resolve_device(device)
        if want.type != model.device.type or (want.index is not None and index(want) != index(model.device)):
            raise VideditError(f"the model is loaded on {model.device}, not {device}; give device to load_model "
                               f"(or pass the model's name)")
    if dtype is not None and resolve_dtype(dtype) != model.dtype:
        raise VideditError(f"the model is loaded in {str(model.dtype).removeprefix('torch.')}, not {dtype}; give "
                           f"dtype to load_model (or pass the model's name)")


def check_methods(model: Model, settings: EditSettings, controlnet: bool = False) -> None:
    """One line naming the inversion, editor or temporal module that cannot run on ``model``'s family
    (``Model.family``), or with a ControlNet where ``controlnet``, and why (``Entry.check_model``),
    before any frame is read."""
    settings.inversion_method.check_model(model.family, controlnet=controlnet, kind="inversion")
    settings.editor_spec.check_model(model.family, controlnet=controlnet, kind="editor")
    for spec, _ in settings.temporal_configs:
        spec.check_model(model.family, controlnet=controlnet, kind="temporal module")


@stage("invert")   # what runs inside is the inversion's work (videdit.metrics.work)
def invert_frames(model: Model, frames: np.ndarray, settings: EditSettings, *,
                  cache: InversionCache | None = None, progress: bool = False,
                  subset: tuple[int, ...] | None = None, control: ControlFrames | None = None) -> Inversion:
    """Invert uint8 frames (F, H, W, 3) already at a model size; cached when ``cache`` is given.
    ``subset`` (indices into F): the inversion of those frames only, cut from a cached
    inversion of all of them where there is one and the method inverts frames independently
    (:meth:`Inversion.select`), else made alone. ``control``: ControlNets and the conditions of
    the F frames, run on every UNet call of the inversion (and part of the cache key)."""
    method, config = settings.inversion_method, settings.inversion_config
    unet_in = torch.float32 if settings.inversion_dtype == "fp32" else model.dtype

    def key_of(frames: np.ndarray, control: ControlFrames | None) -> str:
        return cache_key(frames, model=model.fingerprint, dtype=str(model.dtype), unet_dtype=str(unet_in),
                         source=settings.source_prompt, negative=settings.negative_prompt, method=method.name,
                         config=dataclasses.asdict(config), steps=settings.steps, scheduler=model.scheduler_config,
                         seed=settings.seed, **_schedule_key(settings),
                         **({"control": control.key()} if control is not None else {}),
                         **({"vae_dtype": str(model.vae.dtype)} if model.vae.dtype != model.dtype else {}),
                         **({"vae_tiling": True} if getattr(model.vae, "use_tiling", False) else {}))

    if subset is not None:
        if cache is not None and method.inverts_frames_apart(config):   # a cached inversion of the whole window
            window = key_of(frames, control)
            if (whole := cache.load(window, settings.steps)) is not None:
                log.info("inversion cache hit: %d of %d frames of %s (%s)", len(subset), len(frames),
                         cache.path(window).name, method.name)
                return whole.select(subset)
        frames = frames[list(subset)]
        control = control.select(subset) if control is not None else None
    key = key_of(frames, control)
    if cache is not None and (hit := cache.load(key, settings.steps)) is not None:
        log.info("inversion cache hit: %s (%d frames, %s)", cache.path(key).name, len(frames), method.name)
        return hit
    cond, uncond = model.encode_text([settings.source_prompt]), model.encode_negative(settings.negative_prompt)
    schedule = settings.schedule(model.scheduler_config)
    inputs = InversionInputs(unet=model.unet, prediction_type=model.prediction_type,
                             latents=model.encode_images(frames, settings.batch_size),
                             schedule=schedule, cond=cond,
                             uncond=uncond, batch_size=settings.batch_size, progress=progress, seed=settings.seed,
                             start_step=settings.start_step)
    # the model's own dtype is back afterwards
    with unet_dtype(model.unet, unet_in), unet_inputs(model.unet, _control_inputs(control, schedule, len(frames))):
        inv = method.run(inputs, config)
    if not torch.isfinite(inv.trajectory).all():
        fix = "; try --inversion-dtype fp32" if unet_in != torch.float32 else ""
        raise VideditError(f"the {method.name} inversion diverged (its latents hold NaN or inf){fix}")
    if inv.start_step < settings.start_step:   # a method that inverted the whole schedule
        inv = dataclasses.replace(inv, start_step=settings.start_step)
    if cache is not None and inv.unet_evals:   # one that ran no UNet (noise) is cheaper to make again than to read
        cache.save(key, inv)
        log.info("inversion cached: %s", cache.path(key))
    return inv


def _control_inputs(control: ControlFrames | None, schedule: Schedule, n_frames: int,
                    uncontrolled: tuple[int, ...] = (), modules: list | None = None, info=None) -> list:
    """The UNet input that runs ``control``'s ControlNets on a stage of ``n_frames`` frames (none
    without), on every branch but ``uncontrolled``, with attention ``modules`` on their layers."""
    if control is None:
        return []
    if control.images.shape[1] != n_frames:
        raise VideditError(f"ControlNet conditions for {control.images.shape[1]} frames given to a stage of "
                           f"{n_frames} frames; select the frames it processes (ControlFrames.select)")
    return [control.input(schedule.timesteps, uncontrolled, modules or (), info)]


def _schedule_key(settings: EditSettings) -> dict:
    """The cache-key terms of the schedule options, only where they are set (keys made before
    they existed stay valid)."""
    key = {}
    if settings.start_step:
        key["start_step"] = settings.start_step
    if settings.steps_offset is not None:
        key["steps_offset"] = settings.steps_offset
    return key


def invert_reference(model: Model, image: str | Path | np.ndarray, prompt: str, settings: EditSettings,
                     latent_size: tuple[int, int], *, cache: InversionCache | None = None,
                     progress: bool = False) -> Inversion:
    """An editor's reference image (a path or an (H, W, 3) uint8 array) at the edit's latent
    size, inverted as the input is (the edit's inversion and steps) under ``prompt``, through
    the cache. Its noise is drawn with the next seed, independent of the input's."""
    size = (latent_size[1] * model.vae_scale_factor, latent_size[0] * model.vae_scale_factor)   # (W, H)
    if isinstance(image, np.ndarray):
        frame = cv2.resize(image, size, interpolation=cv2.INTER_AREA)[None]
    else:
        frame, _ = io.read_clip(Path(image), io.ReadOptions(max_frames=1, size=size))
    reference = dataclasses.replace(settings, source_prompt=prompt, seed=settings.seed + 1, editor="plain",
                                    editor_params={}, temporal={}, keep_background=None, source_branch=None)
    return invert_frames(model, frame, reference, cache=cache, progress=progress)


def edit_context(model: Model, inversion: Inversion, settings: EditSettings, config: Any = None, *,
                 frame_size: tuple[int, int] | None = None, cache: InversionCache | None = None,
                 progress: bool = False) -> EditContext:
    """What the editor reads (:class:`EditContext`): text embeddings, the schedule, and the
    inversions of the reference images its ``config`` (default: the settings') names, under their
    prompts (None: the source prompt)."""
    config = settings.editor_config if config is None else config
    source_cond, target_cond = model.encode_text([settings.source_prompt, settings.target_prompt]).chunk(2)
    uncond = model.encode_negative(settings.negative_prompt)
    schedule = settings.schedule(model.scheduler_config)
    if inversion.n_steps != len(schedule):
        raise VideditError(f"the inversion has {inversion.n_steps} steps but the edit asks for {len(schedule)}")
    references = {}
    for option, prompt_option in settings.editor_spec.references.items():
        if getattr(config, option) is not None:
            prompt = getattr(config, prompt_option)
            references[option] = invert_reference(model, getattr(config, option),
                                                  settings.source_prompt if prompt is None else prompt, settings,
                                                  inversion.noise.shape[-2:], cache=cache, progress=progress)
    return EditContext(model=model, inversion=inversion, schedule=schedule, source_cond=source_cond,
                       target_cond=target_cond, uncond=uncond, guidance=settings.guidance,
                       source_prompt=settings.source_prompt, target_prompt=settings.target_prompt, seed=settings.seed,
                       batch_size=settings.batch_size, frame_size=frame_size, references=references)


@torch.no_grad()
def edit_latents(model: Model, inversion: Inversion, settings: EditSettings, *, progress: bool = False,
                 frame_size: tuple[int, int] | None = None, window: Window | None = None,
                 temporal: TemporalStack | None = None, cache: InversionCache | None = None,
                 edited: tuple[int, ...] | None = None, control: ControlFrames | None = None) -> torch.Tensor:
    """Run the editor on an inversion: -> edited clean latents (F, C, h, w). ``frame_size``
    (H, W) is the frames' size before rounding to a model size (masks are checked against it).
    A clip's windows pass their :class:`Window` (its place in the clip and source frames at the
    model size) and one :class:`TemporalStack` for the whole clip (its modules carry their
    state from window to window); without them the inversion is a clip of one window.
    ``edited``: the window indices of the frames the inversion holds, where the temporal
    modules asked for a subset (``edit_frames`` does). ``control``: ControlNets and the
    conditions of the frames the inversion holds, run on every UNet call of the plan and the
    sampling (source branch and edit alike; reference images, inverted and sampled, go without)."""
    n_frames = inversion.noise.shape[0]
    window = window if window is not None else Window(0, n_frames)
    temporal = temporal if temporal is not None else settings.temporal_stack()
    if inversion.method != settings.inversion_method.name and not settings.source_only:
        raise VideditError(f"the inversion was made by {inversion.method!r} and the settings name "
                           f"{settings.inversion_method.name!r}; edit with the settings it was made with")
    config = settings.editor_config
    if edited is not None:   # a per-frame option (a mask per window frame): the edited frames'
        cut = {f.name: getattr(config, f.name)[list(edited)] for f in dataclasses.fields(config)
               if _per_window_frame(getattr(config, f.name), window.size)}
        config = dataclasses.replace(config, **cut) if cut else config
    ctx = edit_context(model, inversion, settings, config, frame_size=frame_size, cache=cache, progress=progress)
    schedule, source_cond, uncond = ctx.schedule, ctx.source_cond, ctx.uncond
    with unet_inputs(model.unet, _control_inputs(control, schedule, n_frames)):   # diffedit's mask sees it too
        plan = settings.editor_spec.plan(ctx, config)
    if (plan.source_branch is not None) != settings.editor_spec.has_source_branch:
        raise VideditError(f"editor {settings.editor!r} declares has_source_branch="
                           f"{settings.editor_spec.has_source_branch} and its plan says otherwise")
    n_branches = plan.x.shape[0]
    replay = settings.inversion_method.replay(inversion, ReplayContext(
        schedule=schedule, n_branches=n_branches, source_branch=plan.source_branch,
        output_branch=plan.output_branch % n_branches, source_cond=source_cond, uncond=uncond,
        prediction_type=model.prediction_type, guidance=settings.guidance), settings.inversion_config)
    if plan.sampler is not None and replay.sampler is not None:
        raise VideditError(f"editor {settings.editor!r} samples with {type(plan.sampler).__name__} and inversion "
                           f"{settings.inversion_method.name!r} replays with {type(replay.sampler).__name__}; they do "
                           f"not combine")
    branches = plan.branches
    if replay.uncond is not None:
        branches = dataclasses.replace(branches, uncond=_broadcast_uncond(replay.uncond, n_branches))
    start = inversion.start_step if plan.start_step is None else plan.start_step
    x, pinned = plan.x, []
    if settings.pin_source or replay.pins_source:   # the source branch's latents are the inversion's at every step
        x = x.clone()
        x[plan.source_branch] = inversion.trajectory[start].to(x)
        pinned = [] if replay.pins_source else [PinnedBranch(plan.source_branch, inversion.trajectory)]
    branches = _cond_only_source(branches, settings, plan, replay)
    # pinned after the replay's callbacks (direct inversion's offsets would move it off the trajectory),
    # before the editor's (a local blend reads the source branch)
    processors, hooks = plan.processors, dict(plan.hooks or {})
    callbacks = [*replay.callbacks, *pinned, *plan.callbacks]
    tctx = TemporalContext(model=model, inversion=inversion, schedule=schedule, info=plan.info, n_branches=n_branches,
                           output_branch=plan.output_branch % n_branches, source_branch=plan.source_branch,
                           edited=edited, cache_dir=cache.directory if cache is not None else None,
                           seed=settings.seed)
    controlnet_modules = []
    for name, tplan in temporal.plans(window, tctx):
        processors = merge(model.unet, processors, tplan.modules, plan.info)
        controlnet_modules += tplan.controlnet_modules
        clash = sorted(set(hooks) & set(tplan.hooks))
        if clash:
            raise VideditError(f"temporal module {name!r} hooks {clash} that the editor hooks too")
        hooks.update(tplan.hooks)
        callbacks += tplan.callbacks
        plan.info.lead_frames = tuple(sorted({*plan.info.lead_frames, *tplan.lead_frames}))
    if settings.feature_cache_config is not None and control is not None:
        raise VideditError(NO_CONTROLNET)
    merging = token_merging(model.unet, settings.token_merging_config, seed=settings.seed,
                            latent_size=tuple(x.shape[-2:]))   # entered last: it wraps the processors installed
    with attention_processors(model.unet, processors), module_hooks(model.unet, hooks), \
            unet_inputs(model.unet, [*_control_inputs(control, schedule, n_frames, plan.uncontrolled,
                                                      controlnet_modules, plan.info),
                                     *plan.inputs]), \
            merging, feature_caching(model.unet, settings.feature_cache_config):
        # (unet_inputs: a ControlNet sees the latents before the editor's channels)
        x = denoise(model.unet, x, schedule, branches, prediction_type=model.prediction_type,
                    callbacks=callbacks, sampler=plan.sampler or replay.sampler,
                    batch_size=settings.batch_size, info=plan.info, start_step=start,
                    progress=progress)
    return x[plan.output_branch]


def _cond_only_source(branches: Branches, settings: EditSettings, plan: EditPlan, replay: Replay) -> Branches:
    """``branches`` with the source branch run without its unconditional half where that changes
    nothing: the editor reads only the source's conditional half (``cond_only_source``), the source's
    guided output goes unread (pinned to the inversion, or at guidance 1), and no replay callback
    reads the model's outputs or the source's step."""
    source = plan.source_branch
    if source is None or not settings.editor_spec.cond_only_source:
        return branches
    source %= len(branches.guidance)
    unread = settings.pin_source or replay.pins_source or branches.guidance[source] == 1
    if not unread or replay.reads_source or any(overrides(cb, hook) for cb in replay.callbacks
                                                 for hook in ("on_noise", "on_guidance")):
        return branches
    return dataclasses.replace(branches, cond_only=(source,))


def _per_window_frame(value: Any, n_frames: int) -> bool:
    """Whether an editor option is an array with one entry per frame of a window of ``n_frames``
    (a mask (F, h, w) or (F, 1, h, w)); one mask (h, w) or (1, h, w) is every frame's."""
    return isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim >= 3 and value.shape[0] == n_frames > 1


def reconstruct(model: Model, inversion: Inversion, settings: EditSettings, *, progress: bool = False,
                control: ControlFrames | None = None) -> torch.Tensor:
    """The inversion's own reconstruction: the plain editor with target prompt = source prompt,
    at ``settings.guidance`` (with the inversion's ``control``). -> clean latents (F, C, h, w)."""
    same = dataclasses.replace(settings, target_prompt=settings.source_prompt, editor="plain", editor_params={})
    return edit_latents(model, inversion, same, progress=progress, control=control)


def _broadcast_uncond(uncond, n_branches: int):
    """A replay's unconditional embeddings, (1, ...) or one such per step -> (nb, ...) per step."""

    def at(step: int) -> torch.Tensor:
        u = uncond(step) if callable(uncond) else uncond if isinstance(uncond, torch.Tensor) else uncond[step]
        return u.expand(n_branches, *u.shape[1:])

    return at


def edit_frames(model: Model, frames: np.ndarray, settings: EditSettings, *, cache: InversionCache | None = None,
                stats: EditStats | None = None, progress: bool = False, start: int = 0,
                temporal: TemporalStack | None = None, last: bool = True,
                control: Control | None = None) -> np.ndarray:
    """Edit uint8 frames (F, H, W, 3) of any size; returns edited frames of the same size.
    ``control``: the clip's ControlNets and conditions (:class:`videdit.control.Control`); the
    inversion and the edit see the window's conditions at the model size.

    A clip edited window by window passes each window's ``start`` (its first frame's index in
    the clip), one :class:`TemporalStack` for all its windows (``settings.temporal_stack()``)
    and ``last`` for its last window. Where a module of the stack makes the frames in a second
    pass (``TemporalStack.second_pass``), the windows come back as decoded and the caller
    makes the clip's frames with ``temporal.finish_clip`` (``edit_video`` does); a call
    without a stack is a whole clip and comes back finished."""
    stats = stats if stats is not None else EditStats()
    whole_clip = temporal is None
    temporal = temporal if temporal is not None else settings.temporal_stack()
    height, width = frames.shape[1:3]
    window = Window(start, len(frames), _at_model_size(model, frames), last=last or whole_clip)
    subset = temporal.frames_to_edit(window)
    watch = Stopwatch(model)
    conditions = control.window(start, window.frames) if control is not None else None
    inv = invert_frames(model, window.frames, settings, cache=cache, progress=progress, subset=subset,
                        control=conditions)
    watch.lap(stats, "invert")
    edited = tuple(range(len(frames))) if subset is None else subset
    if temporal.in_passes is not None:
        z, decoded = _edit_in_passes(model, inv, settings, window, temporal, edited, progress=progress,
                                     frame_size=(height, width), cache=cache, control=conditions)
    else:
        z = edit_latents(model, inv, settings, progress=progress, frame_size=(height, width), window=window,
                         temporal=temporal, cache=cache, edited=subset,
                         control=conditions.select(subset) if conditions is not None else None)
        decoded = model.decode_latents(z, settings.batch_size)
    if subset is None:
        out = decoded
    else:   # the other frames are the source: a module makes them (frames_to_edit)
        out = window.frames.copy()
        out[list(subset)] = decoded
    out = temporal.finish_window(window, out, WindowLatents(edited=edited, source=inv.source, result=z))
    if whole_clip and temporal.second_pass:
        out = temporal.finish_clip(window)
    watch.lap(stats, "edit")
    stats.frames += len(frames)
    stats.windows += 1
    stats.cache_hits += int(inv.cached)
    stats.inversion_unet_evals += 0 if inv.cached else inv.unet_evals
    return _resize(out, (width, height))


def _edit_in_passes(model: Model, inv: Inversion, settings: EditSettings, window: Window, temporal: TemporalStack,
                    edited: tuple[int, ...], *, progress: bool, frame_size: tuple[int, int],
                    cache: InversionCache | None,
                    control: ControlFrames | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """The window's edit as the passes the driving module asks for, one denoising loop each
    (``TemporalModule.next_pass``): -> the edited frames' clean latents (F', C, h, w) and
    decoded frames, each frame's from its last pass. ``control``: the window's conditions (each
    pass gets its frames')."""
    driver = temporal.in_passes
    z = torch.zeros_like(inv.source)
    decoded = np.zeros((len(edited), *window.frames.shape[1:]), np.uint8)
    while (frames := driver.next_pass(window)) is not None:
        where = [edited.index(f) for f in frames]
        zp = edit_latents(model, inv.select(where), settings, progress=progress, frame_size=frame_size,
                          window=window, temporal=temporal, cache=cache, edited=tuple(frames),
                          control=control.select(tuple(frames)) if control is not None else None)
        dp = model.decode_latents(zp, settings.batch_size)
        driver.pass_done(window, tuple(frames), dp, zp)
        z[where], decoded[where] = zp.to(z), dp
    return z, decoded


def _mapping(value, name: str, example: str, of: str = "option: value") -> dict:
    """``value`` (None: empty) as a dict, or a one-line refusal showing the form it needs."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise VideditError(f"{name} must be a mapping of {of}, e.g. {example}; got {value!r}")
    return dict(value)


def _settings(**kw) -> EditSettings:
    kw["inversion_params"] = _mapping(kw.get("inversion_params"), "inversion_params", "{inversion_steps: 50}")
    kw["editor_params"] = _mapping(kw.get("editor_params"), "editor_params", "{mode: replace}")
    kw["temporal"] = {k: _mapping(v, f"temporal {k}", "{every: 2}") for k, v in
                      _mapping(kw.get("temporal"), "temporal", "{keyframes: {every: 2}}", "module: options").items()}
    kw["keep_background"] = keep_background_options(kw.get("keep_background"))
    kw["token_merging"] = token_merging_options(kw.get("token_merging"))
    kw["feature_cache"] = feature_caching_options(kw.get("feature_cache"))
    return EditSettings(**kw)


def _check_settings_names(settings: Mapping, api: str) -> None:
    """Refuse a keyword that is no field of :class:`EditSettings`, naming the nearest."""
    import difflib

    known = [f.name for f in dataclasses.fields(EditSettings) if f.init]
    for name in settings:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            video = name in inspect.signature(edit_video).parameters
            raise VideditError(f"{api} has no option {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                               + ("; it is edit_video's" if video else ""))


def _input_path(input: Any, api: str) -> Path:
    """``input`` as a Path, anything else refused in one line."""
    if isinstance(input, (str, os.PathLike)):
        return Path(input)
    memory = ("; for one image in memory give edit_image an (H, W, 3) uint8 array" if api == "edit_video" else "")
    raise VideditError(f"{api} reads a path (a video, a folder of frames or an image), not "
                       f"{type(input).__name__}{memory}")


def _read_options(read: io.ReadOptions | Mapping | None, window: int,
                  size: int | tuple[int, int] | str | None = None) -> io.ReadOptions:
    """``read`` (options or a mapping of them) in windows of ``window`` frames, at ``size`` where given."""
    if window < 1:
        raise VideditError(f"window must be >= 1 frame, got {window}")
    if isinstance(read, Mapping):
        read = make_config(io.ReadOptions, read, "read")
    elif read is not None and not isinstance(read, io.ReadOptions):
        raise VideditError(f"read takes videdit.ReadOptions or a mapping of its fields, got {type(read).__name__}")
    read = read or io.ReadOptions()
    if size is not None:
        if read.size is not None and read.size != io.ReadOptions(size=size).size:
            raise VideditError(f"size {size!r} and read.size {read.size!r} disagree; give one of them")
        read = dataclasses.replace(read, size=size)
    return dataclasses.replace(read, chunk_size=window)


def edit_video(input: str | Path, output: str | Path | None = None, *, source_prompt: str = "",
               target_prompt: str = "", model: Model | str = DEFAULT_MODEL, steps: int | None = None,
               guidance: float | None = None, seed: int = 0, negative_prompt: str = "", inversion: str | None = None,
               inversion_params: Mapping | None = None, editor: str = "plain", editor_params: Mapping | None = None,
               temporal: Mapping[str, Mapping] | None = None, read: io.ReadOptions | Mapping | None = None,
               size: int | tuple[int, int] | str | None = None, window: int = 16,
               batch_size: int = 8, inversion_dtype: str = "model",
               keep_background: Mapping | float | bool | None = None,
               device: str | None = None, dtype: str | None = None, cache_dir: str | Path | None = None,
               use_cache: bool = True, preview: str | Path | None = None, overwrite: bool = False,
               strength: float | None = None, steps_offset: int | None = None, source_branch: str | None = None,
               max_tokens: int | None = None, control: Control | Sequence | None = None,
               token_merging: Mapping | float | None = None, feature_cache: Mapping | int | None = None,
               progress: bool = False,
               on_progress: Callable[[str, int, int], None] | None = None) -> EditResult:
    """Edit a clip (video file, frame folder or image) window by window.

    With ``output`` the frames stream to it (mp4 keeps the source fps and audio; a folder
    gets PNG frames; a .gif every frame) and ``EditResult.frames`` is None; without it, the
    edited frames are returned, at the source's size either way. ``preview`` writes a source|edit
    GIF beside. A non-empty output folder is replaced only with ``overwrite``.

    ``read``: which frames (:class:`videdit.io.ReadOptions`, or a mapping of its fields). The model
    works at ``size`` or ``read.size`` (:func:`working_size`; None: the model's native short side,
    an int the short side, (W, H) or "WxH", "source": the source's size), refused before any
    frame is read where that exceeds ``max_tokens`` latent tokens per frame
    (:func:`token_budget`); ``EditStats.size`` says which.

    ``control``: ControlNets with their conditions (:class:`videdit.control.ControlSpec` each, e.g.
    ``ControlSpec("canny", "lllyasviel/sd-controlnet-canny", scale=1.0)``, or a loaded
    :class:`videdit.control.Control`); the inversion, the source branch and the edit see the same
    condition of each frame.

    ``on_progress(stage, frames_done, frames_total)``: called after each window ("edit", and
    "second pass" where a module makes the frames then), e.g. for a batch's display.

    ``token_merging``: tomesd's token merging in the edit's UNet calls, a ratio or
    :class:`~videdit.attention.TokenMerging` options (None: off); ``feature_cache``: DeepCache in the
    edit's UNet calls, an interval or :class:`~videdit.core.deepcache.FeatureCaching` options (None: off).
    """
    settings = _settings(source_prompt=source_prompt, target_prompt=target_prompt, negative_prompt=negative_prompt,
                         steps=steps, guidance=guidance, seed=seed, batch_size=batch_size, inversion=inversion,
                         inversion_params=inversion_params, editor=editor, editor_params=editor_params,
                         temporal=temporal, inversion_dtype=inversion_dtype, keep_background=keep_background,
                         strength=strength, steps_offset=steps_offset, source_branch=source_branch,
                         token_merging=token_merging, feature_cache=feature_cache)
    read = _read_options(read, window, size)
    input = _input_path(input, "edit_video")
    info = io.probe(input, read)
    if output is not None:
        io.check_output_path(output, input, overwrite=overwrite)
    if preview is not None:
        io.check_preview_path(preview, input, output)
    model = _resolve_model(model, device, dtype, settings, info.source_size, read.size, max_tokens)
    read, info, work = _at_working_size(model, read, info, max_tokens)
    control = _control(control, model, settings, read, info.n_frames)
    cache = InversionCache(cache_dir) if use_cache else None
    stats = EditStats(size=work)
    keep_source, keep_edit = [], []
    bar = progress_bar(total=info.n_frames, desc="frames", unit="frame", disable=not progress)

    stack = settings.temporal_stack()   # the clip's modules: their state lives from window to window

    def finished(chunk: np.ndarray, out: np.ndarray) -> np.ndarray:
        out = _resize(out, info.source_size)
        if preview is not None:
            keep_source.append(_thumb(_resize(chunk, info.source_size)))
            keep_edit.append(_thumb(out))
        return out

    def edited_chunks() -> Iterator[np.ndarray]:
        only = None   # a clip of one window: its source, for the second pass
        # the next window decodes while this one is edited; closed (its thread ended) however the edit ends
        with closing(io.read_ahead(io.read_frames(input, read))) as chunks:
            following = next(chunks, None)
            while following is not None:
                chunk, following = following, next(chunks, None)   # read one ahead: is this the last window?
                first = stats.frames == 0
                out = edit_frames(model, chunk, settings, cache=cache, stats=stats, progress=progress,
                                  start=stats.frames, temporal=stack, last=following is None, control=control)
                bar.update(len(chunk))
                if on_progress is not None:
                    on_progress("edit", stats.frames, info.n_frames)
                if not stack.second_pass:
                    yield finished(chunk, out)
                elif first and following is None:
                    only = chunk
        if stack.second_pass:
            yield from second_pass(only)

    def second_pass(only: np.ndarray | None) -> Iterator[np.ndarray]:
        """The frames of a module that makes them once it has seen the whole clip: the source
        again, window by window, through ``TemporalStack.finish_clip``."""
        watch, start = Stopwatch(model), 0
        with closing(io.read_ahead([only] if only is not None else io.read_frames(input, read))) as chunks:
            for chunk in progress_bar(chunks, total=-(-stats.frames // read.chunk_size), desc="second pass",
                                      unit="window", disable=not progress, leave=False):
                window = Window(start, len(chunk), _at_model_size(model, chunk),
                                last=start + len(chunk) >= stats.frames)
                yield finished(chunk, stack.finish_clip(window))
                start += len(chunk)
                if on_progress is not None:
                    on_progress("second pass", start, stats.frames)
        watch.lap(stats, "edit")
        if start != stats.frames:
            raise VideditError(f"{input} gave {start} frames on its second read and {stats.frames} on its first; "
                               f"the output would not match the edit (is the file being written to?)")

    try:
        if output is None:
            frames, out_path = np.concatenate(list(edited_chunks())), None
        else:   # encoded in a thread of its own as the windows come
            frames, out_path = None, io.write_beside(
                lambda chunks: io.write_output(output, chunks, info, input_path=input, overwrite=overwrite),
                edited_chunks())
    finally:
        bar.close()
    if preview is not None:
        io.write_gif(preview, np.concatenate(keep_edit), float(info.out_fps or 8), source=np.concatenate(keep_source),
                     **info.timing())
    return EditResult(output=out_path, frames=frames, info=info, stats=stats)


def invert_video(input: str | Path, *, source_prompt: str = "", model: Model | str = DEFAULT_MODEL,
                 steps: int | None = None, guidance: float | None = None, seed: int = 0, negative_prompt: str = "",
                 inversion: str | None = None, inversion_params: Mapping | None = None,
                 read: io.ReadOptions | Mapping | None = None, size: int | tuple[int, int] | str | None = None,
                 window: int = 16, batch_size: int = 8, device: str | None = None,
                 dtype: str | None = None,
                 inversion_dtype: str = "model", cache_dir: str | Path | None = None, strength: float | None = None,
                 steps_offset: int | None = None, editor: str = "plain", editor_params: Mapping | None = None,
                 source_branch: str | None = None, max_tokens: int | None = None,
                 control: Control | Sequence | None = None, progress: bool = False) -> EditStats:
    """Fill the inversion cache for a clip, window by window, as ``edit_video`` would read it
    (``editor``, ``editor_params``, ``source_branch``: the edit's, where they set the strength or
    the inversion's work; ``size`` or ``read.size``: the working size, as there)."""
    settings = _settings(source_prompt=source_prompt, negative_prompt=negative_prompt, steps=steps, guidance=guidance,
                         seed=seed, batch_size=batch_size, inversion=inversion, inversion_params=inversion_params,
                         inversion_dtype=inversion_dtype, strength=strength, steps_offset=steps_offset, editor=editor,
                         editor_params=editor_params, source_branch=source_branch)
    read = _read_options(read, window, size)
    input = _input_path(input, "invert_video")
    info = io.probe(input, read)
    model = _resolve_model(model, device, dtype, settings, info.source_size, read.size, max_tokens)
    read, info, work = _at_working_size(model, read, info, max_tokens)
    control = _control(control, model, settings, read, info.n_frames)
    cache, stats = InversionCache(cache_dir), EditStats(size=work)
    with closing(io.read_ahead(io.read_frames(input, read))) as chunks:
        for chunk in progress_bar(chunks, total=-(-info.n_frames // window), desc="windows", disable=not progress):
            frames = _at_model_size(model, chunk)
            conditions = control.window(stats.frames, frames) if control is not None else None
            watch = Stopwatch(model)
            inv = invert_frames(model, frames, settings, cache=cache, progress=progress, control=conditions)
            watch.lap(stats, "invert")
            stats.frames += len(chunk)
            stats.windows += 1
            stats.cache_hits += int(inv.cached)
            stats.inversion_unet_evals += 0 if inv.cached else inv.unet_evals
    return stats


def _control(control: Control | Sequence | None, model: Model, settings: EditSettings,
             read: io.ReadOptions | None, n_frames: int) -> Control | None:
    """The edit's ControlNets loaded for ``model`` (None: none), refused in one line where a method
    cannot take one or a condition file does not have the clip's ``n_frames``."""
    if control is not None and not (isinstance(control, (list, tuple)) and not control):
        check_methods(model, settings, controlnet=True)   # before any ControlNet is loaded
    control = resolve_control(control, model, read, n_frames)
    if control is not None:
        log.info("ControlNet: %s", ", ".join(f"{s.controlnet} on {s.condition} at {s.scale:g}" for s in control.specs))
    return control


def _thumb(frames: np.ndarray, max_side: int = 256) -> np.ndarray:
    """Downscale frames kept for the preview GIF, so long clips stay cheap to preview."""
    h, w = frames.shape[1:3]
    s = max_side / max(h, w)
    return frames if s >= 1 else _resize(frames, (max(1, round(w * s)), max(1, round(h * s))))


def edit_image(input: str | Path | np.ndarray, output: str | Path | None = None, *, source_prompt: str = "",
               target_prompt: str = "", model: Model | str = DEFAULT_MODEL,
               size: int | tuple[int, int] | str | None = None, device: str | None = None, dtype: str | None = None,
               cache_dir: str | Path | None = None, use_cache: bool = True, max_tokens: int | None = None,
               control: Control | Sequence | None = None, progress: bool = False, **settings) -> np.ndarray:
    """Edit one image (a path, an (H, W, 3) uint8 array or a PIL image) and return it at its own size;
    ``size`` is the working size (:func:`working_size`: None the model's native short side, an
    int a short side, (W, H), or "source"), refused over ``max_tokens`` (:func:`token_budget`);
    ``output`` is written when given; ``control``: ControlNets and their conditions, as :func:`edit_video` takes.
    ``settings``: the fields of :class:`EditSettings` (steps, guidance, inversion, editor, ...)."""
    _check_settings_names(settings, "edit_image")
    settings = _settings(source_prompt=source_prompt, target_prompt=target_prompt, **settings)
    size = io.ReadOptions(size=size).size   # checked: "512", "640x360" and lists read as --size does
    if type(input).__module__.startswith("PIL."):   # a PIL image: its RGB pixels
        input = np.asarray(input.convert("RGB"))
    if not isinstance(input, np.ndarray):
        input = _input_path(input, "edit_image")
    if output is not None:
        if Path(output).suffix.lower() not in io.IMAGE_SUFFIXES:
            raise VideditError(f"edit_image writes an image: give output one of {', '.join(io.IMAGE_SUFFIXES)} "
                               f"(edit_video writes videos), not {output}")
        io.check_output_path(output, None if isinstance(input, np.ndarray) else input, "output")
    if isinstance(input, np.ndarray):
        if input.ndim != 3 or input.shape[2] != 3 or input.dtype != np.uint8:
            raise VideditError(f"expected an (H, W, 3) uint8 image, got {input.dtype} {tuple(input.shape)}")
        image = input
    else:
        image = io.read_clip(input, io.ReadOptions(max_frames=1))[0][0]
    height, width = image.shape[:2]
    m = _resolve_model(model, device, dtype, settings, (width, height), size, max_tokens)
    size, _ = _working(m, (width, height), size, max_tokens)
    work = _resize(image[None], resized_size((width, height), size))[0]
    control = _control(control, m, settings, None, 1)
    cache = InversionCache(cache_dir) if use_cache else None
    out = _resize(edit_frames(m, work[None], settings, cache=cache, progress=progress, control=control),
                  (width, height))[0]
    if output is not None:
        io.write_image(output, out)
    return out
