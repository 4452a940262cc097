"""SEGA: semantic guidance by several concepts at once (Brack et al. 2023, "SEGA: Instructing
Text-to-Image Models using Semantic Guidance", NeurIPS, Sec. 3). Defaults follow the official
code, ml-research/semantic-image-editing ``src/semdiffusers/pipeline_latent_edit_diffusion.py``
(``SemanticEditPipeline.__call__``), as its authors ported it to diffusers
(``SemanticStableDiffusionPipeline.__call__``: edit scale 5, threshold 0.9, warm-up 10,
momentum 0.1 with beta 0.4, 50 steps at guidance 7.5; the official signature's scale 500 and
threshold None are not usable values).

On top of the edit's own prediction (CFG under the target prompt at the edit's guidance),
every concept e_i adds a guidance term computed on the *same* latents:

    psi_i = +-s_i * (eps(z_t, e_i) - eps(z_t, uncond)),

with the sign - for a concept to remove, kept where |psi_i| reaches its ``threshold``
quantile, per channel (over the h x w grid of each frame and channel). With concept weights
w_i (``Concept.weight``, 1 unless given), the edit adds

- while some concepts are in their warm-up and others past it: the weighted *average* of those
  past it, sum_i w_i psi_i / sum_i w_i;
- once every concept is past its warm-up: gamma = sum_i w_i psi_i + s_m v, and momentum
  v <- beta v + (1 - beta) gamma is updated at every step from the first (concepts in their
  warm-up included), so what built up in the warm-up acts when it ends.

A concept past ``cooldown`` contributes nothing (psi_i = 0, w_i = 0). A user ``mask``
multiplies every psi_i (a videdit option; LEDITS++ has it). ``eps(z, uncond)`` is the
unconditional prediction the loop made for CFG (whatever unconditional embedding the
inversion's replay put there); at guidance 1 there is none and the negative prompt's is
computed here, unless the target prompt is the negative prompt (then the loop's output is that
prediction). SEGA's code adds nothing at guidance <= 1 (its concepts ride in its CFG branch);
the concepts acting there too is videdit's extension.

Cost and design: a step callback (:class:`ConceptGuidance`) evaluates the UNet itself on the
latents the loop is denoising, through the loop's own ``predict_noise`` (same frame batching,
same attention processors): k extra UNet evaluations per frame and model call for k concepts
(only those that act, or feed the momentum), +1 at guidance 1 unless the target prompt is the
negative prompt. The loop is unchanged (its batch layout, which attention editors and replays
rely on, included), and every sampler works, since each of its model calls gets the guidance
on its own latents; momentum is updated once per model call (twice a step for two-evaluation
samplers such as EDICT). Concepts with scale 0 cost nothing (their weight still counts in the
average, as in SEGA); without a concept of nonzero scale this is the plain editor. LEDITS++
(``ledits``) is the same guidance on the unconditional prediction, with attention masks, summed,
without momentum.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from videdit.core.loop import CallInfo, StepCallback, StepContext, predict_noise
from videdit.editing.blended import editor_mask, plain_plan
from videdit.editing.masks import MaskSource, validate_mask_source
from videdit.editing.registry import EditContext, EditPlan, register_editor
from videdit.errors import VideditError

REFERENCE = ("Brack et al. 2023, SEGA: Instructing Text-to-Image Models using Semantic Guidance (NeurIPS); "
             "github.com/ml-research/semantic-image-editing (pipeline_latent_edit_diffusion.py), "
             "diffusers SemanticStableDiffusionPipeline")


@dataclass(frozen=True)
class Concept:
    """One concept: its text, guidance scale, direction, and optional per-concept overrides."""

    text: str
    scale: float = 5.0
    remove: bool = False              # guide away from the concept (the reverse editing direction)
    warmup: int | None = None         # None: the editor's ``warmup``
    threshold: float | None = None    # None: the editor's ``threshold``
    weight: float = 1.0               # SEGA's edit weight (averaging during others' warm-up; a factor after)

    def __post_init__(self):
        if not isinstance(self.text, str) or not self.text.strip():
            raise VideditError(f"a concept needs a non-empty text, got {self.text!r}")
        if not 0 <= self.scale <= 100:
            raise VideditError(f"concept {self.text!r}: scale must be in [0, 100] (remove=true reverses "
                               f"the direction), got {self.scale}")
        if self.warmup is not None and self.warmup < 0:
            raise VideditError(f"concept {self.text!r}: warmup must be >= 0 steps, got {self.warmup}")
        if self.threshold is not None and not 0 <= self.threshold < 1:
            raise VideditError(f"concept {self.text!r}: threshold must be in [0, 1), got {self.threshold}")
        if self.weight < 0:
            raise VideditError(f"concept {self.text!r}: weight must be >= 0, got {self.weight}")


def as_concept(value: Any) -> Concept:
    """A concept from YAML/CLI values: "text", {"text": ..., "scale": ..., ...} or a Concept."""
    if isinstance(value, Concept):
        return value
    if isinstance(value, str):
        return Concept(text=value)
    if isinstance(value, Mapping):
        fields = {f.name for f in dataclasses.fields(Concept)}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise VideditError(f"a concept does not take {', '.join(map(str, unknown))}; it takes {sorted(fields)}")
        if "text" not in value:
            raise VideditError(f"a concept needs a text, got {dict(value)}")
        return Concept(**value)
    raise VideditError(f"a concept is a text or a mapping like {{text: glasses, scale: 5}}, got {value!r}")


def as_concepts(value: Any) -> tuple[Concept, ...]:
    """One concept or a sequence of them (:func:`as_concept` each)."""
    if isinstance(value, (str, Mapping, Concept)):
        value = [value]
    return tuple(as_concept(c) for c in value)


def check_schedule(name: str, warmup: int, cooldown: int | None, threshold: float) -> None:
    """The checks SEGA's and LEDITS++'s warm-up, cool-down and threshold share."""
    if warmup < 0:
        raise VideditError(f"{name} warmup must be >= 0 steps, got {warmup}")
    if cooldown is not None and cooldown <= warmup:
        raise VideditError(f"{name} cooldown ({cooldown}) must come after warmup ({warmup}); None guides to the end")
    if not 0 <= threshold < 1:
        raise VideditError(f"{name} threshold must be in [0, 1) (0.9 keeps the top 10%), got {threshold}")


@dataclass(frozen=True)
class SegaConfig:
    concepts: Sequence[Concept] = ()  # each a Concept, a text, or a mapping {text, scale, remove, warmup, ...}
    warmup: int = 10                  # steps without guidance, counted from the edit's first (per concept)
    cooldown: int | None = None       # no guidance from this step on (None: to the end)
    threshold: float = 0.9            # keep the top (1 - threshold) of |psi| per frame and channel
    momentum: float = 0.1             # s_m (0 = off)
    momentum_beta: float = 0.4        # beta_m
    mask: MaskSource | None = None    # a user mask (path or tensor, 1 = edit) multiplying the guidance

    def __post_init__(self):
        object.__setattr__(self, "concepts", as_concepts(self.concepts))
        check_schedule("sega", self.warmup, self.cooldown, self.threshold)
        if self.momentum < 0:
            raise VideditError(f"sega momentum must be >= 0 (0 = off), got {self.momentum}")
        if not 0 <= self.momentum_beta < 1:
            raise VideditError(f"sega momentum_beta must be in [0, 1), got {self.momentum_beta}")
        validate_mask_source(self.mask, "sega mask")


class ConceptGuidance(StepCallback):
    """Evaluates the concepts on the loop's latents and adds what :meth:`guidance` makes of
    them to its prediction (the module docstring). Subclasses say which concepts a step needs
    and how their terms combine."""

    def __init__(self, unet, embeds: torch.Tensor, concepts: Sequence[Concept], uncond: torch.Tensor,
                 info: CallInfo, *, warmup: int, cooldown: int | None, threshold: float, n_frames: int,
                 start_step: int, batch_size: int, user_mask: torch.Tensor | None = None, out_is_uncond: bool = False):
        self.unet, self.embeds = unet, embeds                     # embeds (k, L, D)
        self.concepts, self.uncond, self.info = list(concepts), uncond, info
        self.cooldown, self.n_frames, self.start_step, self.batch_size = cooldown, n_frames, start_step, batch_size
        self.warmups = [warmup if c.warmup is None else c.warmup for c in self.concepts]
        self.thresholds = [threshold if c.threshold is None else c.threshold for c in self.concepts]
        self.user_mask = user_mask
        self.out_is_uncond = out_is_uncond             # unguided, target = negative prompt: out is eps(uncond)
        self.eps_uncond: torch.Tensor | None = None   # (nb, F, C, h, w): the loop's unconditional output
        self.fresh = False                             # eps_uncond belongs to the model call in flight

    def warmed(self, j: int, i: int) -> bool:
        """Whether concept j is past its warm-up at edit step i."""
        return i >= self.warmups[j]

    def cooled(self, i: int) -> bool:
        return self.cooldown is not None and i >= self.cooldown

    def needed(self, i: int) -> list[int]:
        """The concepts whose prediction edit step i uses."""
        raise NotImplementedError

    def guidance(self, ctx: StepContext, i: int, psi: Mapping[int, torch.Tensor]) -> torch.Tensor | None:
        """What the step adds to the prediction, from the scaled terms ``psi`` of the needed
        concepts (each (nb, F, C, h, w), user mask applied); None: nothing."""
        raise NotImplementedError

    def on_guidance(self, ctx, frames, uncond, cond):
        nb = uncond.shape[0]
        if self.eps_uncond is None or self.eps_uncond.shape[0] != nb:
            self.eps_uncond = uncond.new_zeros(nb, self.n_frames, *uncond.shape[2:])  # (nb, F, C, h, w)
        self.eps_uncond[:, list(frames)] = uncond
        self.fresh = True
        return uncond, cond

    def on_noise(self, ctx: StepContext, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        i = ctx.step - self.start_step
        fresh, self.fresh = self.fresh, False
        needed = self.needed(i)
        psi = {}
        if needed:
            eps_u = self.eps_uncond if fresh else out if self.out_is_uncond else None
            embeds = self.embeds[needed]                     # (m, L, D)
            if eps_u is None:                                # unguided: the unconditional prediction comes first
                embeds = torch.cat([self.uncond.to(embeds), embeds])
            preds = self.predict(x, ctx.timestep, embeds)    # (m, nb, F, C, h, w)
            if eps_u is None:
                eps_u, preds = preds[0], preds[1:]
            for k, j in enumerate(needed):
                c = self.concepts[j]
                psi[j] = (preds[k] - eps_u) * (-c.scale if c.remove else c.scale)  # (nb, F, C, h, w)
                if self.user_mask is not None:
                    psi[j] = psi[j] * self.user_mask.to(psi[j])
        add = self.guidance(ctx, i, psi)
        return out if add is None else out + add

    def predict(self, x: torch.Tensor, timestep: int, embeds: torch.Tensor) -> torch.Tensor:
        """Model outputs for latents x (nb, F, C, h, w) under each of embeds (m, L, D):
        -> (m, nb, F, C, h, w), the m x nb pairs run as branches of one loop call."""
        m, nb = embeds.shape[0], x.shape[0]
        xs = x[None].expand(m, *x.shape).flatten(0, 1)                      # (m*nb, F, C, h, w)
        cond = embeds[:, None].expand(m, nb, *embeds.shape[1:]).flatten(0, 1)  # (m*nb, L, D)
        out = predict_noise(self.unet, xs, timestep, cond, None, (1.0,) * (m * nb),
                            batch_size=self.batch_size, info=self.info)
        return out.unflatten(0, (m, nb))


class SemanticGuidance(ConceptGuidance):
    """SEGA's combination: per-channel thresholds, weighted averaging during warm-up, momentum."""

    def __init__(self, *args, momentum: float = 0.0, momentum_beta: float = 0.4, **kwargs):
        super().__init__(*args, **kwargs)
        self.momentum, self.momentum_beta = momentum, momentum_beta
        self.velocity: torch.Tensor | None = None      # v

    def needed(self, i: int) -> list[int]:
        if self.cooled(i):
            return []
        # a concept in its warm-up feeds the momentum only; one of scale 0 adds nothing (but its weight counts)
        return [j for j, c in enumerate(self.concepts) if c.scale != 0 and (self.warmed(j, i) or self.momentum > 0)]

    def guidance(self, ctx, i, psi):
        psi = {j: p * top_per_channel(p, self.thresholds[j]) for j, p in psi.items()}
        weight = [0.0 if self.cooled(i) else c.weight for c in self.concepts]
        edit = sum(weight[j] * p for j, p in psi.items()) if psi else None
        if self.momentum > 0 and (edit is not None or self.velocity is not None):
            v = self.velocity if self.velocity is not None else torch.zeros_like(edit)
            edit = self.momentum * v if edit is None else edit + self.momentum * v
            self.velocity = self.momentum_beta * v + (1 - self.momentum_beta) * edit
        warmed = [j for j in range(len(self.concepts)) if self.warmed(j, i)]
        if len(warmed) == len(self.concepts):
            return edit
        total = sum(weight[j] for j in warmed)
        if total == 0:   # none past its warm-up (or those past it cooled down, where SEGA divides 0 by 0)
            return None
        return sum(weight[j] / total * psi[j] for j in warmed if j in psi)


def top_per_channel(psi: torch.Tensor, threshold: float) -> torch.Tensor:
    """1 where |psi| (nb, F, C, h, w) reaches its ``threshold`` quantile over h x w, per
    (branch, frame, channel), as SEGA's ``torch.quantile(|psi|.flatten(2), threshold, dim=2)``."""
    a = psi.abs()
    q = a.flatten(-2).float().quantile(threshold, dim=-1)[..., None, None]   # (nb, F, C, 1, 1)
    return (a >= q).to(psi.dtype)


def concept_plan(ctx: EditContext, concepts: Sequence[Concept]) -> tuple[EditPlan, dict | None]:
    """The plain plan and the keyword arguments of :class:`ConceptGuidance` this edit fixes;
    None where no concept has a scale (the plain editor, bit for bit)."""
    plan = plain_plan(ctx)
    if all(c.scale == 0 for c in concepts):
        return plan, None
    kwargs = dict(unet=ctx.model.unet, embeds=ctx.model.encode_text([c.text for c in concepts]),   # (k, L, D)
                  concepts=list(concepts), uncond=ctx.uncond, info=plan.info, n_frames=ctx.inversion.noise.shape[0],
                  start_step=ctx.inversion.start_step, batch_size=ctx.batch_size,
                  out_is_uncond=ctx.guidance == 1 and torch.equal(ctx.target_cond, ctx.uncond))
    return plan, kwargs


@register_editor("sega", SegaConfig, reference=REFERENCE, steps=50, guidance=7.5)
def sega(ctx: EditContext, config: SegaConfig) -> EditPlan:
    """SEGA (Brack et al. 2023): add or remove concepts by semantic guidance on top of CFG."""
    plan, kwargs = concept_plan(ctx, config.concepts)
    if kwargs is not None:
        plan.callbacks = (SemanticGuidance(**kwargs, warmup=config.warmup, cooldown=config.cooldown,
                                           threshold=config.threshold, user_mask=editor_mask(ctx, config.mask),
                                           momentum=config.momentum, momentum_beta=config.momentum_beta),)
    return plan
