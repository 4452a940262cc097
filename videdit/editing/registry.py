"""Registry of editors. An editor turns an :class:`EditContext` into an :class:`EditPlan`
(initial latents per branch, text branches, step callbacks, attention processors, forward
hooks); the one loop in ``videdit.core`` runs the plan. Editors never know which inversion
ran. Every module of this package is imported on the registry's first lookup."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from videdit.core.conditioning import UnetInput
from videdit.core.loop import Branches, CallInfo, Sampler, StepCallback
from videdit.core.schedule import Schedule
from videdit.inversion.record import Inversion
from videdit.registry import Entry, Registry, summary_of


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
    references: Mapping[str, Inversion] = field(default_factory=dict)   # option -> its image's inversion


@dataclass
class EditPlan:
    x: torch.Tensor                   # (nb, F, C, h, w) initial latents
    branches: Branches
    callbacks: Sequence[StepCallback] = ()
    processors: Mapping[str, Any] | None = None   # for attention_processors(...)
    # for module_hooks(...): module-name glob -> forward hook; a hook sees the call's rows (CallInfo.rows,
    # CallInfo.to_full for the (half, branch, frame) layout)
    hooks: Mapping[str, Any] | None = None
    info: CallInfo = field(default_factory=CallInfo)  # shared with the processors
    output_branch: int = -1           # which branch is the edit
    source_branch: int | None = None  # the branch that replays the source, if the editor runs one
    start_step: int | None = None     # sampling starts at this step; None: the inversion's (``inversion.start_step``)
    uncontrolled: tuple[int, ...] = ()  # branches a ControlNet leaves alone: a reference image's (not the clip)
    sampler: Sampler | None = None    # how steps move the latents, where the editor's reference fixes it; None: the
    #                                   inversion's replay's (DDIM for most)
    inputs: Sequence[UnetInput] = ()  # extra inputs of every UNet call (core.conditioning.unet_inputs)


@dataclass(frozen=True)
class EditorSpec(Entry):
    plan: Callable[[EditContext, Any], EditPlan] = None
    has_source_branch: bool = False   # its plan replays the source beside the edit (EditPlan.source_branch)
    # options naming a reference image -> the option with its prompt (None: the source prompt): the pipeline
    # reads and inverts the image (the edit's inversion, through the cache), handing it over in EditContext.references
    references: Mapping[str, str] = field(default_factory=dict)
    pinned_source: bool = False     # by default the source branch is pinned to the inversion's trajectory
    inversion: str | None = None    # the one inversion it takes (its reference's start), the edit's default; None: any
    # the schedule its reference samples on, where not DDIM's: (scheduler config, steps, steps_offset) -> Schedule
    schedule: Callable[[dict, int, int | None], Schedule] | None = None
    reads: tuple[str, ...] = ()     # what it reads from the inversion's record (InversionMethod.stores)
    cond_only_source: bool = False  # reads only its source branch's conditional half (register_editor)
    # (its config) -> False where its plan reads nothing of the inversion but the clean source latents (the
    # edit then inverts nothing: SOURCE_ONLY in its place); None: it always reads the inversion
    reads_inversion: Callable[[Any], bool] | None = None
    source_only: str = ""           # when reads_inversion is false, in words (`videdit methods`)

    def capabilities(self) -> dict[str, object]:
        return {"has_source_branch": self.has_source_branch,
                **({"pinned_source": True} if self.pinned_source else {}),
                **({"inversion": self.inversion} if self.inversion else {}),
                **({"schedule": self.schedule.__name__} if self.schedule is not None else {}),
                **({"reference_images": ", ".join(self.references)} if self.references else {}),
                **({"reads": ", ".join(self.reads)} if self.reads else {}),
                **({"cond_only_source": True} if self.cond_only_source else {}),
                **({"source_only": self.source_only} if self.reads_inversion else {})}


EDITORS: Registry[EditorSpec] = Registry("editor", "videdit.editing")


def register_editor(name: str, config: type, *, source_branch: bool = False, references: Mapping[str, str] = {},
                    reference: str = "", pinned_source: bool = False, models: Mapping[str, Any] | None = None,
                    inversion: str | None = None, schedule: Callable[[dict, int, int | None], Schedule] | None = None,
                    reads: tuple[str, ...] = (), cond_only_source: bool = False,
                    reads_inversion: Callable[[Any], bool] | None = None, source_only: str = "",
                    **edit_defaults: float):
    """Decorator: register ``fn(ctx, config) -> EditPlan`` under ``name``; ``source_branch``
    declares that its plans replay the source beside the edit, ``references`` the options
    that name a reference image (with the option holding its prompt). ``reference``: the paper
    and official code its defaults follow; ``edit_defaults``: the reference's steps, guidance,
    strength or steps_offset, where the editor fixes them (they win over the inversion's); ``pinned_source``:
    the reference computes the source branch's features on the stored inversion latents
    (``EditSettings.source_branch``); ``models``: the :class:`~videdit.registry.Entry` fields
    ``families``, ``refuses`` and ``controlnet`` where they differ from the defaults; ``inversion``: the
    only inversion it takes, where its reference starts from one (InstructPix2Pix from seeded noise),
    which is then the edit's default; ``schedule``: how its reference spaces the steps, where that is
    not DDIM's (``videdit.core.euler.euler_schedule``); ``reads``: what it reads from the inversion's
    record, which the inversion must declare it ``stores``; ``cond_only_source``: its attention modules,
    hooks and callbacks read only the source branch's conditional half (the maps, queries, keys and
    features it hands to the target), so a source branch whose guided output goes unread (pinned to
    the inversion, or at guidance 1) runs without its unconditional half (``Branches.cond_only``);
    ``reads_inversion(config)``: False where the plan reads only the clean source latents of the
    inversion (a reference that starts from its own noise), so that the edit inverts nothing
    (``source_only``: when, in words)."""

    def wrap(fn):
        if (pinned_source or cond_only_source) and not source_branch:
            raise ValueError(f"editor {name!r}: pinned_source and cond_only_source need a source branch")
        EDITORS.add(EditorSpec(name=name, config=config, summary=summary_of(fn, name), module=fn.__module__, plan=fn,
                               has_source_branch=source_branch, references=dict(references), reference=reference,
                               edit_defaults=edit_defaults, pinned_source=pinned_source, inversion=inversion,
                               schedule=schedule, reads=tuple(reads), cond_only_source=cond_only_source,
                               reads_inversion=reads_inversion, source_only=source_only, **(models or {})))
        return fn

    return wrap


def get_editor(name: str) -> EditorSpec:
    return EDITORS[name]
