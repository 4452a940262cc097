"""Registry of editors. An editor turns an :class:`EditContext` into an :class:`EditPlan`
(initial latents per branch, text branches, step callbacks, attention processors, forward
hooks); the one loop in ``videdit.core`` runs the plan. Editors never know which inversion
ran."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from videdit.core.loop import Branches, CallInfo, StepCallback
from videdit.core.schedule import Schedule
from videdit.registry import lookup, summary_of
from videdit.inversion.record import Inversion


@dataclass(frozen=True)
class EditContext:
    """What an editor may read. Text embeddings are (1, L, D). Sampling starts at
    ``inversion.start_step`` from ``inversion.noise``."""

    model: Any
    inversion: Inversion
    schedule: Schedule
    source_cond: torch.Tensor
    target_cond: torch.Tensor
    uncond: torch.Tensor
    guidance: float
    source_prompt: str
    target_prompt: str
    seed: int = 0
    batch_size: int = 8   # frames per UNet call, for editors that call the UNet themselves
    frame_size: tuple[int, int] | None = None  # (H, W) of the input frames; None: the latents' x VAE factor


@dataclass
class EditPlan:
    x: torch.Tensor                   # (nb, F, C, h, w) initial latents
    branches: Branches
    callbacks: Sequence[StepCallback] = ()
    processors: Mapping[str, Any] | None = None   # for attention_processors(...)
    hooks: Mapping[str, Any] | None = None        # for module_hooks(...): module-name glob -> forward hook
    info: CallInfo = field(default_factory=CallInfo)  # shared with the processors
    output_branch: int = -1           # which branch is the edit
    source_branch: int | None = None  # the branch that replays the source, if the editor runs one


@dataclass(frozen=True)
class EditorSpec:
    name: str
    config: type
    plan: Callable[[EditContext, Any], EditPlan]
    summary: str


EDITORS: dict[str, EditorSpec] = {}


def register_editor(name: str, config: type):
    """Decorator: register ``fn(ctx, config) -> EditPlan`` under ``name``."""

    def wrap(fn):
        summary = summary_of(fn, name)
        EDITORS[name] = EditorSpec(name=name, config=config, plan=fn, summary=summary)
        return fn

    return wrap


def get_editor(name: str) -> EditorSpec:
    return lookup(EDITORS, name, "editor")
