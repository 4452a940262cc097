"""The contract between the pipeline and a temporal module.

A clip is edited in windows of consecutive frames (:class:`Window`). For one edit of one clip
the pipeline builds one instance of each temporal module (a :class:`TemporalModule` subclass,
registered with :func:`register_temporal`); the instance's attributes are what the module
carries from window to window, so its state is typed and its own. For each window, in order:

1. ``frames_to_edit(window)``: the window indices the module needs the model to edit, or None
   for all. Only where some module ``makes_frames`` (it makes every output frame itself) are
   the other frames left out of inversion, denoising and decoding.
2. ``plan(window, ctx)``: attention modules, step callbacks, forward hooks and lead frames
   for the one denoising loop (a :class:`TemporalPlan`).
3. ``finish_window(window, frames, latents)``: after decoding, the window's frames at the
   model size (the model's edits where it edited, the source frames elsewhere) -> the
   window's output frames.

A module that ``edits_in_passes`` (Rerender-A-Video's keyframes: each keyframe is sampled after
the one before is decoded, twice) is asked for the window's passes one at a time: ``next_pass``
names the window indices the next denoising loop runs (None: the window is done), and
``pass_done`` gets each pass's decoded frames and latents; a frame's last pass is its edit.

A module with ``second_pass`` makes no frame before it has seen the whole clip: the pipeline
edits every window first, then reads the source again and calls ``finish_clip(window)`` for
each window (:func:`videdit.pipeline.edit_video`).

A second-pass module that ``splits`` reads in ``finish_clip`` only what the first pass left,
frozen (``frozen()``): its windows are then independent, and one long clip may be split into
groups of windows made on several workers after the first pass (:mod:`videdit.split`). A
propagation stage that ``splits`` (tokenflow scope window) lets the keyframes be edited in the
first pass and the frames between, window by window, in the groups
(:attr:`TemporalStack.keyframe_split`). A
stack whose frames come window by window carries its state from each window to the next, and
runs on one worker (:meth:`TemporalStack.split_refusal`).

Modules of one edit see each other once, in ``bind``, where a module that builds on another
(a propagation stage on the keyframes) finds it, or says which one is missing. They run in
the order of their ``order`` (stable: the user's order otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence, TypeVar

import numpy as np
import torch

from videdit.attention.processor import AttentionModule
from videdit.core.loop import CallInfo, StepCallback
from videdit.core.schedule import Schedule
from videdit.errors import VideditError
from videdit.inversion.record import Inversion
from videdit.registry import MODEL_FAMILIES, Entry, Registry, summary_of


@dataclass(frozen=True)
class Window:
    """Consecutive clip frames edited together."""

    start: int                        # clip index of the first frame
    size: int                         # number of frames
    frames: np.ndarray | None = None  # (F, H, W, 3) uint8 source frames at the model size, where known
    last: bool = True                 # the clip's last window: nothing is carried past it

    def __post_init__(self):
        if self.frames is not None and len(self.frames) != self.size:
            raise VideditError(f"a window of {self.size} frames got {len(self.frames)} source frames")

    @property
    def first(self) -> bool:
        """Whether this is the clip's first window."""
        return self.start == 0

    @property
    def indices(self) -> range:
        """Clip indices of the window's frames."""
        return range(self.start, self.start + self.size)

    def source(self, what: str) -> np.ndarray:
        """The source frames, or an error saying that ``what`` needs them."""
        if self.frames is None:
            raise VideditError(f"{what} needs the window's source frames; edit through edit_frames or edit_video")
        return self.frames


@dataclass(frozen=True)
class TemporalContext:
    """What a module's plan may read besides its window: the model and this window's edit."""

    model: Any
    inversion: Inversion
    schedule: Schedule
    info: CallInfo                   # the CallInfo the loop updates (shared with the editor's processors)
    n_branches: int
    output_branch: int
    source_branch: int | None
    edited: tuple[int, ...] | None = None   # window indices the inversion holds (None: every frame)
    cache_dir: Path | None = None    # the inversion cache's folder (None: no cache); flow is kept there too
    seed: int = 0                    # the edit's seed (noise a module draws repeats with it)

    def denoised(self, window: Window) -> list[int]:
        """Clip indices of the frames the loop denoises, in batch order."""
        return list(window.indices) if self.edited is None else [window.start + i for i in self.edited]


@dataclass
class TemporalPlan:
    modules: list[AttentionModule] = field(default_factory=list)
    callbacks: list[StepCallback] = field(default_factory=list)
    hooks: dict[str, Any] = field(default_factory=dict)   # forward hooks: they see the call's rows (CallInfo.rows)
    lead_frames: tuple[int, ...] = ()   # window frame indices the loop runs first (CallInfo.lead_frames)
    # attention modules on the ControlNets' layers, seen as "controlnet{k}." + processor name
    controlnet_modules: list[AttentionModule] = field(default_factory=list)


class TemporalModule:
    """Base class of temporal modules and frame stages: every hook does nothing by default."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    order: ClassVar[int] = 0            # modules run in this order (stable)
    makes_frames: ClassVar[bool] = False   # makes every output frame itself: see frames_to_edit
    needs_source_branch: ClassVar[bool] = False   # reads the editor's source branch
    propagates_attention: ClassVar[bool] = False  # replaces the frames between keyframes' attention outputs
    edits_in_passes: ClassVar[bool] = False   # runs the window's edit as passes: next_pass / pass_done
    splits: ClassVar[bool] = False      # its second pass reads only frozen first-pass state: windows independent
    reference: ClassVar[str] = ""       # the paper and official code it follows, if any
    # Entry fields families / refuses / controlnet (videdit.registry): attention- and latent-level
    # modules run on every family, InstructPix2Pix too (Text2Video-Zero's video edit)
    models: ClassVar[Mapping[str, Any]] = {"families": MODEL_FAMILIES, "refuses": {}}

    def __init__(self, config: Any):
        self.config = config

    @classmethod
    def expand(cls, options: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
        """The modules (name, options) that ``--temporal NAME:options`` stands for: itself, or
        for an older spelling, the modules it now names."""
        return [(cls.name, options)]

    @property
    def second_pass(self) -> bool:
        """Whether the output frames come from ``finish_clip``, once every window is edited."""
        return False

    def bind(self, modules: Sequence[TemporalModule]) -> None:
        """Called once, with every module of the edit (this one too)."""

    def frames_to_edit(self, window: Window) -> Sequence[int] | None:
        """Window indices this module needs edited by the model; None: all. No state changes."""
        return None

    def plan(self, window: Window, ctx: TemporalContext) -> TemporalPlan:
        return TemporalPlan()

    def next_pass(self, window: Window) -> tuple[int, ...] | None:
        """(``edits_in_passes``) The window indices the next denoising loop runs, or None: done."""
        return None

    def pass_done(self, window: Window, edited: tuple[int, ...], frames: np.ndarray, latents: torch.Tensor) -> None:
        """(``edits_in_passes``) A pass's decoded uint8 frames (F', H, W, 3) and clean latents (F', C, h, w)."""

    def finish_window(self, window: Window, frames: np.ndarray, latents: WindowLatents) -> np.ndarray:
        """uint8 frames (F, H, W, 3) of the window at the model size -> its output frames."""
        return frames

    def finish_clip(self, window: Window) -> np.ndarray:
        """The second pass (``second_pass``): a window's source frames -> its output frames."""
        raise NotImplementedError(f"{self.name} makes no second pass")

    def frozen(self) -> TemporalModule:
        """(``splits``) After the first pass: a copy holding only what ``finish_clip`` reads, small
        and picklable, sent to the workers that make the clip's window groups."""
        raise NotImplementedError(f"{self.name} does not split its second pass")

    def split_refusal(self) -> str | None:
        """(``splits``) Why this module's options keep the clip on one worker, in one line; None: they don't."""
        return None


@dataclass(frozen=True)
class WindowLatents:
    """What the loop made of a window, for the stages after decoding."""

    edited: tuple[int, ...]           # window indices the model edited
    source: torch.Tensor              # (F', C, h, w) their source latents
    result: torch.Tensor              # (F', C, h, w) their edited clean latents


@dataclass(frozen=True)
class TemporalSpec(Entry):
    module_class: type[TemporalModule] | None = None

    def capabilities(self) -> dict[str, object]:
        cls = self.module_class
        return {"makes_frames": cls.makes_frames, "needs_source_branch": cls.needs_source_branch,
                "splits": cls.splits}


TEMPORAL: Registry[TemporalSpec] = Registry("temporal module", "videdit.video")

Module = TypeVar("Module", bound=type)


def register_temporal(cls: Module) -> Module:
    """Class decorator: register a :class:`TemporalModule` subclass under its ``name``."""
    TEMPORAL.add(TemporalSpec(name=cls.name, config=cls.config_class, summary=summary_of(cls, cls.name),
                              module=cls.__module__, module_class=cls, reference=cls.reference,
                              **cls.models))
    return cls


def get_temporal(name: str) -> TemporalSpec:
    return TEMPORAL[name]


def find(modules: Sequence[TemporalModule], cls: type, needed_by: str) -> Any:
    """The module of class ``cls`` among ``modules``, or an error naming what to add."""
    for m in modules:
        if isinstance(m, cls):
            return m
    raise VideditError(f"{needed_by} builds on the {cls.name} module; add --temporal {cls.name} (or put "
                       f"{cls.name} in the preset's temporal modules)")


class TemporalStack:
    """The temporal modules of one edit of one clip, in order; their attributes are the clip's
    state from window to window."""

    def __init__(self, modules: Sequence[TemporalModule]):
        self.modules = sorted(modules, key=lambda m: m.order)
        for m in self.modules:
            m.bind(self.modules)

    @property
    def second_pass(self) -> bool:
        return any(m.second_pass for m in self.modules)

    def frames_to_edit(self, window: Window) -> tuple[int, ...] | None:
        """The window indices the model must edit: all, unless a module makes every output
        frame itself; then those that every module needs (None where one needs all)."""
        if not any(m.makes_frames for m in self.modules):
            return None
        chosen: set[int] = set()
        for m in self.modules:
            needed = m.frames_to_edit(window)
            if needed is None:
                return None
            chosen.update(needed)
        return tuple(sorted(chosen))

    @property
    def in_passes(self) -> TemporalModule | None:
        """The module that runs the edit as passes (``edits_in_passes``), if one does."""
        drivers = [m for m in self.modules if m.edits_in_passes]
        if len(drivers) > 1:
            raise VideditError(f"temporal modules {[m.name for m in drivers]} each run the edit in passes; keep one")
        return drivers[0] if drivers else None

    def plans(self, window: Window, ctx: TemporalContext) -> list[tuple[str, TemporalPlan]]:
        return [(m.name, m.plan(window, ctx)) for m in self.modules]

    def finish_window(self, window: Window, frames: np.ndarray, latents: WindowLatents) -> np.ndarray:
        for m in self.modules:
            frames = m.finish_window(window, frames, latents)
        return frames

    def split_refusal(self) -> str | None:
        """None where one clip may be split into window groups made on several workers after the
        first pass (the module making the frames in its second pass ``splits``); else why not,
        in one line naming the module."""
        for m in self.modules:
            if m.splits and (why := m.split_refusal()) is not None:
                return why
        if self.keyframe_split:
            return None
        makers = [m for m in self.modules if m.second_pass]
        if len(makers) == 1 and makers[0].splits:
            return None
        if makers:
            return (f"temporal module {makers[0].name!r} makes the frames from state its second pass changes; "
                    f"the clip runs on one worker")
        if not self.modules:
            return ("no temporal module makes the frames in a second pass (e.g. keyframes:pixels=bilateral); "
                    "the clip runs on one worker")
        names = ", ".join(repr(m.name) for m in self.modules)
        return (f"temporal module{'s' if len(self.modules) > 1 else ''} {names} carr"
                f"{'y' if len(self.modules) > 1 else 'ies'} state from window to window; the clip runs on one worker")

    @property
    def keyframe_split(self) -> bool:
        """Whether the clip splits after a keyframe pass: ``keyframes`` with a stage that propagates
        their attention during denoising and ``splits`` (tokenflow scope window), nothing else.
        The first pass edits the keyframes window by window (their attention carried), freezing
        what the frames between read; the frames between are then edited per window, on any
        worker (:mod:`videdit.split`)."""
        names = sorted(m.name for m in self.modules)
        return names == ["keyframes", "tokenflow"] and all(m.splits and m.split_refusal() is None
                                                            for m in self.modules if m.propagates_attention)

    def frozen_maker(self) -> TemporalModule:
        """The frozen module that makes the frames in the second pass (:meth:`TemporalModule.frozen`)."""
        why = self.split_refusal()
        if why is not None:
            raise VideditError(why)
        return next(m for m in self.modules if m.second_pass).frozen()

    def finish_clip(self, window: Window) -> np.ndarray:
        makers = [m for m in self.modules if m.second_pass]
        if len(makers) != 1:
            raise VideditError(f"temporal modules {[m.name for m in makers]} each make the clip's frames in a "
                               f"second pass; keep one")
        return makers[0].finish_clip(window)
