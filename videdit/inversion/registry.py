"""Registry of inversion methods: name -> (config dataclass, function)."""

from __future__ import annotations

import collections.abc
import dataclasses
import numbers
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
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
    # a frame's inversion does not depend on the frames inverted with it: always, or for the configs a test says
    independent_frames: bool | Callable[[Any], bool] = True

    def inverts_frames_apart(self, config: Any) -> bool:
        """Whether, with ``config``, a frame's inversion is the same whatever frames share its batch."""
        return self.independent_frames(config) if callable(self.independent_frames) else self.independent_frames


INVERSIONS: dict[str, InversionMethod] = {}


def register_inversion(name: str, config: type, replay: Callable[[Inversion, ReplayContext, Any], Replay] = ddim_replay,
                       independent_frames: bool | Callable[[Any], bool] = True):
    """Decorator: register ``fn(inputs, config) -> Inversion`` under ``name``; ``replay``
    tells editing how to sample it back (default: plain DDIM). ``independent_frames=False``
    for a method whose frames share something (noise drawn for the batch, a stopping test
    over the batch), or a test of its config saying when: then an inversion of some frames is
    not cut from a cached one of more."""

    def wrap(fn):
        summary = summary_of(fn, name)
        INVERSIONS[name] = InversionMethod(name=name, config=config, run=fn, replay=replay, summary=summary,
                                           independent_frames=independent_frames)
        return fn

    return wrap


def get_inversion(name: str) -> InversionMethod:
    return lookup(INVERSIONS, name, "inversion")


def make_config(config_cls: type, params: dict | None, what: str):
    """Build a frozen config from a dict, naming the unknown keys and the accepted ones, and
    the options whose value is not of the field's type (a string where a number goes)."""
    params = dict(params or {})
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise VideditError(f"{what} does not take {', '.join(unknown)}; it takes {sorted(fields) or 'no options'}")
    try:
        hints = typing.get_type_hints(config_cls)
    except (NameError, TypeError):   # a hint that does not resolve here: the config's own checks stand
        hints = {}
    for name, value in params.items():
        if name not in hints or _fits(hints[name], value) is not False:
            continue
        if isinstance(value, str) and _fits(hints[name], 0.5):   # YAML reads 1e-3 as a string
            try:
                params[name] = float(value)
                continue
            except ValueError:
                pass
        raise VideditError(f"{what} {name} must be {_describe(hints[name])}, got {value!r}")
    return config_cls(**params)


_PLAIN = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", type(None): "none"}


def _fits(hint, value) -> bool | None:
    """Whether ``value`` is of type ``hint``, for plain hints (numbers, strings, flags, lists,
    mappings, their unions); None where the hint is none of those."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        found = [_fits(h, value) for h in typing.get_args(hint)]
        return True if True in found else None if None in found else False
    if hint is bool:
        return isinstance(value, (bool, np.bool_)) or (isinstance(value, int) and value in (0, 1))
    if hint in (int, float):
        kind = numbers.Integral if hint is int else numbers.Real
        return isinstance(value, kind) and not isinstance(value, (bool, np.bool_))
    if hint is str:
        return isinstance(value, (str, os.PathLike))      # a path where a file name goes
    if hint is type(None):
        return value is None
    if hint in (tuple, list) or origin in (tuple, list):
        # a lone string may stand for a list of one: the config's own checks say (e.g. layer patterns)
        return None if isinstance(value, str) else isinstance(value, (tuple, list))
    if hint is dict or origin in (dict, collections.abc.Mapping):
        return isinstance(value, collections.abc.Mapping)
    return None


def _describe(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if hint in (tuple, list) or typing.get_origin(hint) in (tuple, list):
        return "a list"
    if hint is dict or typing.get_origin(hint) in (dict, collections.abc.Mapping):
        return "a mapping of options"
    return _PLAIN.get(hint, getattr(hint, "__name__", str(hint)))
