"""Registry of inversion methods: name -> (config dataclass, function)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch

from videdit.core.loop import Embeds, Sampler, StepCallback
from videdit.core.schedule import Schedule
from videdit.errors import VideditError
from videdit.registry import lookup, summary_of
from videdit.inversion.record import Inversion


@dataclass(frozen=True)
class InversionInputs:
    """Everything an inversion method may read. Latents (F, C, h, w); text (1, L, D)."""

    unet: Any
    prediction_type: str
    latents: torch.Tensor
    schedule: Schedule
    cond: torch.Tensor
    uncond: torch.Tensor
    batch_size: int = 8
    progress: bool = False
    seed: int = 0


@dataclass(frozen=True)
class ReplayContext:
    """What an inversion's replay may read when an edit starts. Text (1, L, D)."""

    schedule: Schedule
    n_branches: int
    source_branch: int | None   # the editor's source branch, if it runs one
    output_branch: int
    source_cond: torch.Tensor
    uncond: torch.Tensor
    prediction_type: str
    guidance: float | None = None   # the edit's guidance scale (None: not known)


@dataclass
class Replay:
    """What sampling must do so that this inversion's noise gives back the source: the
    sampler (None = DDIM), per-step unconditional embeddings replacing the editor's
    (each (1, L, D) or (1, F, L, D)), and step callbacks run before the editor's."""

    sampler: Sampler | None = None
    uncond: Embeds | None = None
    callbacks: tuple[StepCallback, ...] = ()


def ddim_replay(inv: Inversion, ctx: ReplayContext, config: Any) -> Replay:
    """Plain DDIM sampling from the inverted noise."""
    return Replay()


@dataclass(frozen=True)
class InversionMethod:
    name: str
    config: type
    run: Callable[[InversionInputs, Any], Inversion]
    replay: Callable[[Inversion, ReplayContext, Any], Replay]
    summary: str


INVERSIONS: dict[str, InversionMethod] = {}


def register_inversion(name: str, config: type, replay: Callable[[Inversion, ReplayContext, Any], Replay] = ddim_replay):
    """Decorator: register ``fn(inputs, config) -> Inversion`` under ``name``; ``replay``
    tells editing how to sample it back (default: plain DDIM)."""

    def wrap(fn):
        summary = summary_of(fn, name)
        INVERSIONS[name] = InversionMethod(name=name, config=config, run=fn, replay=replay, summary=summary)
        return fn

    return wrap


def get_inversion(name: str) -> InversionMethod:
    return lookup(INVERSIONS, name, "inversion")


def make_config(config_cls: type, params: dict | None, what: str):
    """Build a frozen config from a dict, naming the unknown keys and the accepted ones."""
    params = dict(params or {})
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise VideditError(f"{what} does not take {', '.join(unknown)}; it takes {sorted(fields) or 'no options'}")
    return config_cls(**params)
