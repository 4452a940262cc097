"""Registry of temporal modules: name -> (config dataclass, build function).

A module's build function turns a :class:`TemporalContext` into a :class:`TemporalPlan`:
attention modules (composed per layer with the editor's), step callbacks (run after the
inversion's and the editor's), forward hooks, a ``finish`` step on the decoded frames (before
``keep_background``), and lead frames (window indices the UNet must
see first, together in one batch, because other frames attend to them).
``TemporalContext.clip_state`` is one dict per clip that survives from window to window, for
what a window hands the next (the last edited frame, keyframe features, flow).

A module that can make no frame before it has seen the whole clip puts, in the clip's *first*
window, a callable under ``clip_state[CLIP_FINISH]``: ``(source frames of a window at the model
size, the window's first frame index) -> its output frames``. ``edit_video`` then edits every
window first, keeps none of their frames, and makes the output in a second pass over the
source with that callable (updated in place by the later windows).

A module whose ``finish`` makes some frames from their source alone may say, before the
window is inverted, which frames the model must edit (``edited_frames``: ``(config, the
window's source frames at the model size, its first frame index, the module's entry of
``clip_state``) -> window indices, or None for all``, without changing the state). Where
every module of the edit names such a subset, only those frames are inverted, denoised and decoded: the
module's build sees their window indices as ``TemporalContext.edited`` (the inversion holds
those frames, ``frames`` the whole window), and its ``finish`` gets the whole window with the
decoded edits at those indices and the source frames elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from videdit.attention.processor import AttentionModule
from videdit.core.loop import CallInfo, StepCallback
from videdit.core.schedule import Schedule
from videdit.registry import lookup, summary_of
from videdit.inversion.record import Inversion


CLIP_FINISH = "finish_clip"   # clip_state key: the second pass over the source (module doc)


@dataclass(frozen=True)
class TemporalContext:
    model: Any
    inversion: Inversion
    schedule: Schedule
    info: CallInfo                   # the CallInfo the loop updates (shared with the editor's processors)
    n_branches: int
    output_branch: int
    source_branch: int | None
    frames: np.ndarray | None        # (F, H, W, 3) uint8 source frames of this window at the model size
    frame_offset: int = 0            # index in the clip of this window's first frame
    clip_state: dict = field(default_factory=dict)
    final_window: bool = False       # no later window reads clip_state: keep nothing across windows for one
    cache_dir: Path | None = None    # the inversion cache's folder (None: no cache); flow is kept there too
    edited: tuple[int, ...] | None = None   # window indices of the frames the inversion holds (None: all; module doc)


@dataclass
class TemporalPlan:
    modules: list[AttentionModule] = field(default_factory=list)
    callbacks: list[StepCallback] = field(default_factory=list)
    hooks: dict[str, Any] = field(default_factory=dict)
    lead_frames: tuple[int, ...] = ()   # window frame indices the loop runs first (CallInfo.lead_frames)
    finish: Callable[[np.ndarray], np.ndarray] | None = None   # decoded uint8 window frames -> frames


# (config, the window's source frames at the model size, its first frame index, the module's clip state)
#   -> window indices of the frames the model must edit, or None: all
EditedFrames = Callable[[Any, np.ndarray, int, dict], Sequence[int] | None]


@dataclass(frozen=True)
class TemporalSpec:
    name: str
    config: type
    build: Callable[[TemporalContext, Any], TemporalPlan]
    summary: str
    edited_frames: EditedFrames | None = None   # which frames the model must edit (module doc); None: all, always


TEMPORAL: dict[str, TemporalSpec] = {}


def register_temporal(name: str, config: type, edited_frames: EditedFrames | None = None):
    """Decorator: register ``fn(ctx, config) -> TemporalPlan`` under ``name``."""

    def wrap(fn):
        summary = summary_of(fn, name)
        TEMPORAL[name] = TemporalSpec(name=name, config=config, build=fn, summary=summary, edited_frames=edited_frames)
        return fn

    return wrap


def get_temporal(name: str) -> TemporalSpec:
    return lookup(TEMPORAL, name, "temporal module")
