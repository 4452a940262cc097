"""Registry of inversion methods: name -> (config dataclass, run, replay), and what they read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch

from videdit.core.loop import Embeds, Sampler, StepCallback
from videdit.core.schedule import Schedule
from videdit.inversion._float64 import from_step
from videdit.inversion.record import Inversion
from videdit.progress import progress_bar
from videdit.registry import Entry, Registry, summary_of


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
    start_step: int = 0   # the edit starts at this schedule step: trajectory[:start_step] is never read

    def inverse_steps(self) -> Iterable[int]:
        """The schedule steps a step-by-step inversion runs, from the clean latent's (the last) up to
        ``start_step`` (the edit reads nothing above it), under a nested progress bar."""
        n = len(self.schedule)
        return progress_bar(reversed(range(self.start_step, n)), total=n - self.start_step, desc="invert",
                            disable=not self.progress, leave=False)

    def trajectory(self, path: list[torch.Tensor]) -> torch.Tensor:
        """``path`` (the clean latent, then the latent of each step :meth:`inverse_steps` ran) -> the
        record's (N+1, F, C, h, w) trajectory; the entries above ``start_step``, which the edit never
        reads, hold its latent (the record keeps its shape and stays finite for the cache)."""
        return from_step(torch.stack(path[::-1]), self.start_step)


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
    (each (1, L, D) or (1, F, L, D)), and step callbacks run before the editor's.
    ``pins_source``: the callbacks put the editor's source branch on the inversion's latents
    after every step whatever the model predicted for it (so its guided output goes unread);
    ``reads_source``: a callback reads where the source branch's own step took it (its guided
    output is needed, even where the source is pinned after it)."""

    sampler: Sampler | None = None
    uncond: Embeds | None = None
    callbacks: tuple[StepCallback, ...] = ()
    pins_source: bool = False
    reads_source: bool = False


def ddim_replay(inv: Inversion, ctx: ReplayContext, config: Any) -> Replay:
    """Plain DDIM sampling from the inverted noise."""
    return Replay()


@dataclass(frozen=True)
class InversionMethod(Entry):
    run: Callable[[InversionInputs, Any], Inversion] = None
    replay: Callable[[Inversion, ReplayContext, Any], Replay] = ddim_replay
    # a frame's inversion does not depend on the frames inverted with it: always, or for the configs a test says
    independent_frames: bool | Callable[[Any], bool] = True
    stores: tuple[str, ...] = ()   # what its record's extras hold for editors that read them (EditorSpec.reads)
    # a test of its config: its replay works on the editor's source branch (an editor without one is refused)
    needs_source_branch: Callable[[Any], bool] | None = None
    # config -> the config to run where the editor pins its source branch, when options of it go unread then
    pinned_config: Callable[[Any], Any] | None = None

    def inverts_frames_apart(self, config: Any) -> bool:
        """Whether, with ``config``, a frame's inversion is the same whatever frames share its batch."""
        return self.independent_frames(config) if callable(self.independent_frames) else self.independent_frames

    def capabilities(self) -> dict[str, object]:
        apart = self.independent_frames
        return {"inverts_frames_apart": "with some options" if callable(apart) else apart,
                **({"stores": ", ".join(self.stores)} if self.stores else {}),
                **({"needs_source_branch": "with some options"} if self.needs_source_branch else {})}


INVERSIONS: Registry[InversionMethod] = Registry("inversion", "videdit.inversion")


def register_inversion(name: str, config: type, replay: Callable[[Inversion, ReplayContext, Any], Replay] = ddim_replay,
                       independent_frames: bool | Callable[[Any], bool] = True, *, reference: str = "",
                       models: Mapping[str, Any] | None = None, stores: tuple[str, ...] = (),
                       needs_source_branch: Callable[[Any], bool] | None = None,
                       pinned_config: Callable[[Any], Any] | None = None, **edit_defaults: float):
    """Decorator: register ``fn(inputs, config) -> Inversion`` under ``name``; ``replay``
    tells editing how to sample it back (default: plain DDIM). ``independent_frames=False``
    for a method whose frames share something (noise drawn for the batch, a stopping test
    over the batch), or a test of its config saying when: then an inversion of some frames is
    not cut from a cached one of more. ``reference``: the paper and official code its defaults
    follow; ``models``: the :class:`~videdit.registry.Entry` fields ``families``, ``refuses`` and
    ``controlnet`` where they differ from the defaults; ``stores``: what its record's extras hold
    for the editors that read them (``"attention"``: the maps FateZero fuses); ``needs_source_branch``: a
    test of its config saying when its replay works on the editor's source branch; ``pinned_config``:
    the config to run instead where the editor pins its source branch to the inversion (the same
    edit, less work: options whose work only moves that branch);
    ``edit_defaults``: the reference's steps, guidance, strength (the part of the
    schedule it inverts and edits) or steps_offset, used where the edit does not set them.

    ``fn`` may skip the steps before ``inputs.start_step`` (the edit never reads them); the
    record it returns starts there or later (the pipeline moves an earlier ``start_step`` up)."""

    def wrap(fn):
        INVERSIONS.add(InversionMethod(name=name, config=config, summary=summary_of(fn, name), module=fn.__module__,
                                       run=fn, replay=replay, independent_frames=independent_frames,
                                       reference=reference, edit_defaults=edit_defaults, stores=tuple(stores),
                                       needs_source_branch=needs_source_branch, pinned_config=pinned_config,
                                       **(models or {})))
        return fn

    return wrap


def get_inversion(name: str) -> InversionMethod:
    return INVERSIONS[name]
