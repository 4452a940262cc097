"""LEDITS++: semantic guidance on the unconditional prediction, masked by cross-attention and by
the guidance's own strength (Brack et al. 2024, "LEDITS++: Limitless Image Editing using
Text-to-Image Models", CVPR, Sec. 3.2, Eq. 12). Defaults follow diffusers'
``LEditsPPPipelineStableDiffusion`` (the authors' port of ml-research/ledits_pp
``src/leditspp/pipeline_stable_diffusion_ledits.py``): ``__call__`` (edit scale 5, threshold
0.9, warm-up 0, ``use_intersect_mask=True``, the noise mask joining at timesteps <= 800) and
``invert`` (30 steps after skipping 15%: the last 30 of int(30 * 1.15) = 34, i.e. 34 steps at
strength 0.9). Its inversion with a DDIM scheduler is ``ddpm`` with ``guidance=3.5`` and
``zero_last=False`` (it keeps the last noise map), which ``configs/ledits.yaml`` sets; the
official repository inverts with SDE-DPM-Solver++ instead, which videdit does not have, and
defaults to noise masks alone (``use_intersect_mask=False``).

LEDITS++ has no target prompt: the prediction is the unconditional one plus the concepts'
terms, eps = eps(z_t, uncond) + sum_i w_i psi_i, with

    psi_i = +-s_i * M_i * (eps(z_t, e_i) - eps(z_t, uncond))

(the sign - for a concept to remove). Its edit is videdit's at guidance 1 (the default here)
with the target prompt equal to the negative prompt (both "" by default); a target prompt is
videdit's extension (the base is then CFG under it at the edit's guidance, SEGA's formula). A
concept acts from step ``warmup`` (counted from the edit's first step) until ``cooldown``; the
terms of the acting concepts add up (no momentum, no averaging). ``Concept.weight`` multiplies a
term (the official repository's ``edit_weights``; 1, as diffusers, unless given). The mask M_i:

- ``masking="noise"`` (M^2 alone, the official repository's ``__call__`` default): keep where
  |psi_i| summed over channels reaches its ``threshold`` quantile over the latent grid, per frame;
- ``masking="attention"`` (M^1 alone): the concept's cross-attention in the same UNet call, from
  the down- and up-block layers whose grid is the latent's 1/``attention_resolution`` (16x16 for
  Stable Diffusion's 64x64 latents), averaged over those layers and their heads, summed over
  token positions 1 to L - 2, smoothed at that grid (3x3 kernel, reflect padding:
  :func:`ledits_smoothing`), thresholded at its ``threshold`` quantile per frame and brought to
  the latent grid by nearest neighbours;
- ``masking="intersect"`` (M^1 * M^2, Eq. 12; the default): both, the noise mask only at
  timesteps <= ``intersect_t``.

The positions summed are the reference code's: it takes the concept's token count from the
tokenizer's ``return_length``, which with ``padding="max_length"`` is the padded length L (77),
so the map sums every position but <start> and the last, the concept's tokens, <end> and the
padding, which carry the concept's text too. ``concept_tokens=True`` sums the concept's own
tokens only, as the paper's text describes. A user ``mask`` multiplies every psi_i before its
masks are made (LEDITS++'s ``user_mask``).
The concepts are evaluated by :class:`videdit.editing.sega.ConceptGuidance` (its docstring:
cost and design); their attention maps are recorded in those calls only (:class:`ConceptAttention`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from videdit.attention import compose
from videdit.attention.processor import AttentionModule, AttnCall
from videdit.editing.blended import editor_mask
from videdit.editing.masks import MaskSource, validate_mask_source
from videdit.editing.registry import EditContext, EditPlan, register_editor
from videdit.editing.sega import (Concept, ConceptGuidance, top_per_channel, as_concepts, check_schedule,
                                  concept_plan)
from videdit.errors import VideditError
from videdit.masks import gaussian_blur
from videdit.registry import departs

MASKING = ("intersect", "attention", "noise")
REFERENCE = ("Brack et al. 2024, LEDITS++: Limitless Image Editing using Text-to-Image Models (CVPR); "
             "github.com/ml-research/ledits_pp, diffusers LEditsPPPipelineStableDiffusion")


@dataclass(frozen=True)
class LeditsConfig:
    concepts: Sequence[Concept] = ()  # each a Concept, a text, or a mapping {text, scale, remove, warmup, ...}
    warmup: int = 0                   # steps without guidance, counted from the edit's first (per concept)
    cooldown: int | None = None       # no guidance from this step on (None: to the end)
    threshold: float = 0.9            # keep the top (1 - threshold) of each mask's values
    # "intersect" (M^1 * M^2), "attention" (M^1) or "noise" (M^2)
    masking: str = departs("intersect", official="noise (ml-research/ledits_pp: use_intersect_mask=False)",
                           why="the authors' diffusers port, LEditsPPPipelineStableDiffusion, defaults to the "
                               "intersection (the paper's Eq. 12), which the equivalence tests follow")
    intersect_t: int = 800            # "intersect": the noise mask joins at timesteps <= this
    attention_resolution: int = 4     # attention masks read the layers at 1/this of the latent side
    concept_tokens: bool = False      # attention of the concept's own tokens, not of positions 1..L-2
    mask: MaskSource | None = None    # a user mask (path or tensor, 1 = edit) multiplying the guidance

    def __post_init__(self):
        object.__setattr__(self, "concepts", as_concepts(self.concepts))
        check_schedule("ledits", self.warmup, self.cooldown, self.threshold)
        if self.masking not in MASKING:
            raise VideditError(f"ledits masking must be one of {MASKING}, got {self.masking!r}")
        if self.intersect_t < 0:
            raise VideditError(f"ledits intersect_t must be a timestep >= 0, got {self.intersect_t}")
        if self.attention_resolution < 1 or self.attention_resolution & (self.attention_resolution - 1):
            raise VideditError(f"ledits attention_resolution must be a power of two (4: the layers at 1/4 of the "
                               f"latent side), got {self.attention_resolution}")
        validate_mask_source(self.mask, "ledits mask")


class ConceptAttention(AttentionModule):
    """LEDITS++'s attention store, for the concept calls only (``active``; :meth:`reset`
    before each): the probabilities of tokens 1..``n_tokens`` in the cross-attention layers
    of the down and up blocks whose grid is the latent's 1/``factor``, summed over layers and
    heads and counted, so :meth:`maps` is their mean, (nb, F, T, h, w) at that grid. It asks
    for explicit probabilities only while recording, so the loop's own calls keep the fused
    attention."""

    cross = True

    def __init__(self, n_tokens: int, n_frames: int, factor: int):
        self.tokens, self.n_frames, self.factor = list(range(1, 1 + n_tokens)), n_frames, factor  # 0 is <start>
        self.active = False
        self.total: torch.Tensor | None = None
        self.count = 0
        self.grids: set[tuple[int, int]] = set()    # the grids seen, for the error where none is at 1/factor

    @property
    def needs_probs(self) -> bool:
        return self.active

    def applies(self, layer: str, cross: bool) -> bool:
        return cross and not layer.startswith("mid_block")   # LEDITS++ reads the "down" and "up" layers

    def probs(self, call: AttnCall, p: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return p
        h, w = call.spatial()
        height, width = call.info.latent_size
        self.grids.add((h, w))
        if (h, w) != (-(-height // self.factor), -(-width // self.factor)):
            return p
        m = call.split(p[..., self.tokens].sum(1))[-1]            # (nb, fb, h*w, T): heads summed, unguided
        nb, fb = m.shape[:2]
        m = m.transpose(-1, -2).reshape(nb, fb, len(self.tokens), h, w).float()
        if self.total is None:
            self.total = m.new_zeros(nb, self.n_frames, len(self.tokens), h, w)
        self.total[:, list(call.info.frames)] += m
        if call.info.batch == 0:
            self.count += call.heads                            # per layer, once per model call
        return p

    def reset(self) -> None:
        self.total, self.count = None, 0
        self.grids.clear()

    def maps(self) -> torch.Tensor:
        """(nb, F, T, h, w): the mean over the layers read and their heads."""
        if self.total is None:
            seen = ", ".join(f"{h}x{w}" for h, w in sorted(self.grids, reverse=True))
            raise VideditError(f"ledits attention masks read the down/up cross-attention layers at 1/{self.factor} "
                               f"of the latent side, and this model has none there (its concept calls ran at "
                               f"{seen}); set attention_resolution to the factor of one of those grids, or "
                               f"masking='noise'")
        return self.total / self.count


def ledits_smoothing(maps: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """(B, 1, h, w) maps smoothed as LEDITS++ does (``LeditsGaussianSmoothing``, Attend-and-Excite's):
    reflect padding and a normalised 3x3 kernel proportional to exp(-(d / (2 sigma))^2), d the
    offset of a tap along each axis: videdit's Gaussian blur at sigma * sqrt(2)."""
    return gaussian_blur(maps, sigma=sigma * 2 ** 0.5)


class LeditsGuidance(ConceptGuidance):
    """LEDITS++'s combination: the masked terms of the acting concepts, added up."""

    def __init__(self, *args, masking: str, intersect_t: int, n_tokens: Sequence[int],
                 store: ConceptAttention | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.masking, self.intersect_t, self.n_tokens, self.store = masking, intersect_t, list(n_tokens), store
        self.maps: torch.Tensor | None = None            # (k, nb, F, T, h, w): the acting concepts' attention maps
        self.acting: list[int] = []                      # the concepts of the step in flight, as needed() said

    def needed(self, i: int) -> list[int]:
        if self.cooled(i):
            return []
        self.acting = [j for j, c in enumerate(self.concepts) if c.scale != 0 and self.warmed(j, i)]
        return self.acting

    def predict(self, x, timestep, embeds):
        if self.store is None:
            return super().predict(x, timestep, embeds)
        self.store.reset()
        self.store.active = True
        try:
            out = super().predict(x, timestep, embeds)
        finally:
            self.store.active = False
        m = embeds.shape[0]
        self.maps = self.store.maps().unflatten(0, (m, x.shape[0]))[-len(self.acting):]  # after eps(uncond), if run
        return out

    def guidance(self, ctx, i, psi):
        if not psi:
            return None
        total = 0
        for k, j in enumerate(self.acting):
            total = total + self.concepts[j].weight * psi[j] * self.mask(psi[j], k, j, ctx.timestep)
        return total

    def mask(self, psi: torch.Tensor, k: int, j: int, timestep: int) -> torch.Tensor:
        """M_j for psi (nb, F, C, h, w) -> (nb, F, 1, h, w) of 0/1."""
        threshold = self.thresholds[j]
        noise_mask = None
        if self.masking == "noise" or (self.masking == "intersect" and timestep <= self.intersect_t):
            noise_mask = top_per_channel(psi.abs().sum(2, keepdim=True), threshold)       # (nb, F, 1, h, w)
        if self.masking == "noise":
            return noise_mask
        a = self.maps[k][..., :self.n_tokens[j], :, :].sum(-3)             # (nb, F, h', w'): the concept's tokens
        nb, n_frames, h, w = a.shape
        a = ledits_smoothing(a.reshape(nb * n_frames, 1, h, w)).view(nb, n_frames, 1, h, w)
        attn_mask = top_per_channel(a, threshold).flatten(0, 1)                       # (nb*F, 1, h', w')
        attn_mask = F.interpolate(attn_mask, size=psi.shape[-2:], mode="nearest").view(nb, n_frames, 1,
                                                                                       *psi.shape[-2:])
        return attn_mask if noise_mask is None else attn_mask * noise_mask


@register_editor("ledits", LeditsConfig, reference=REFERENCE, steps=34, guidance=1.0, strength=0.9)
def ledits(ctx: EditContext, config: LeditsConfig) -> EditPlan:
    """LEDITS++ (Brack et al. 2024): add or remove concepts by masked semantic guidance."""
    plan, kwargs = concept_plan(ctx, config.concepts)
    if kwargs is None:
        return plan
    model, concepts = ctx.model, kwargs["concepts"]
    if config.concept_tokens:
        n_tokens = [max(1, len(model.tokens(c.text)) - 2) for c in concepts]    # without <start> and <end>
    else:   # LEDITS++ counts the tokenizer's padded length: every position but the first and the last
        n_tokens = [model.tokenizer.model_max_length - 2] * len(concepts)
    store = None
    if config.masking != "noise":
        store = ConceptAttention(max(n_tokens), kwargs["n_frames"], config.attention_resolution)
        plan.processors = compose(model.unet, [store], plan.info)
    plan.callbacks = (LeditsGuidance(**kwargs, warmup=config.warmup, cooldown=config.cooldown,
                                     threshold=config.threshold, user_mask=editor_mask(ctx, config.mask),
                                     masking=config.masking, intersect_t=config.intersect_t, n_tokens=n_tokens,
                                     store=store),)
    return plan
