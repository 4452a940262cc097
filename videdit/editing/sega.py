"""SEGA / LEDITS++: semantic guidance by several concepts at once (Brack et al. 2023,
"SEGA: Instructing Text-to-Image Models using Semantic Guidance", NeurIPS, Sec. 3;
Brack et al. 2024, "LEDITS++: Limitless Image Editing using Text-to-Image Models", CVPR,
Sec. 3.2, Eq. 12).

On top of the edit's own prediction (CFG under the target prompt), every concept e_i adds
a guidance term computed on the *same* latents,

    eps <- eps + sum_i psi_i,    psi_i = +-s_i * M_i * (eps(z_t, e_i) - eps(z_t, uncond))

with the sign - for a concept to remove (SEGA's reversed direction), and M_i a mask:

- ``masking="noise"`` (SEGA's threshold): keep where |psi_i|, summed over channels, is in its
  top (1 - ``threshold``) quantile, per frame;
- ``masking="attention"`` (LEDITS++'s M^1): keep where the cross-attention of the
  concept's tokens, Gaussian-smoothed, is in its top (1 - ``threshold``) quantile;
- ``masking="intersect"`` (LEDITS++'s M^1 * M^2, Eq. 12; the default): both, intersected (only the
  attention mask above timestep ``intersect_t``, as the reference code does).

A concept acts from step ``warmup`` (counted from the edit's first step) until ``cooldown``;
SEGA's momentum, gamma <- gamma + s_m v and then v <- beta v + (1 - beta) gamma,
is off by default (LEDITS++ drops it). A user ``mask`` multiplies every psi_i (LEDITS++'s
user mask). ``eps(z, uncond)`` is the unconditional prediction the loop made for CFG
(whatever unconditional embedding the inversion's replay put there); at guidance 1 there
is none and the negative prompt's is computed here (unless the target prompt is the negative
prompt, as in LEDITS++'s prompt-free edits: then the loop's output is that prediction).

Cost and design: the concept predictions need eps(z_t, e_i) for the latents the loop is
denoising, so a step callback (:meth:`SemanticGuidance.on_noise`) evaluates the UNet itself
on those latents, through the loop's own ``predict_noise`` (same frame batching, same
attention processors): k extra UNet evaluations per frame and model call for k active
concepts, +1 at guidance 1 unless the target prompt is the negative prompt. The loop is
unchanged (its batch layout, which attention editors and replays rely on, included), and
every sampler works, since each of its model calls gets the guidance on its own latents.
Concepts with scale 0 cost nothing; with no concepts this is the plain editor.

Deviations from the references: thresholds are per (branch, frame), and the noise mask
ranks |psi| summed over channels for SEGA too (LEDITS++'s choice; SEGA's code ranks each
channel alone); attention maps come from all cross-attention layers (``attention_layers``),
resized to the latent grid, rather than only the latent/4 layers of LEDITS++, and are
smoothed at latent resolution; SEGA's per-concept weights (``edit_weights``) are folded into
the scales; momentum is updated once per model call (twice a step for two-evaluation
samplers such as EDICT) and, as in SEGA, applied once every concept is past its warm-up.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from videdit.attention import CrossAttentionStore, compose
from videdit.core.loop import CallInfo, StepCallback, StepContext, predict_noise
from videdit.editing.blended import editor_mask, plain_plan
from videdit.editing.masks import MaskSource, gaussian_blur, validate_mask_source
from videdit.editing.registry import EditContext, EditPlan, register_editor
from videdit.errors import VideditError

MASKING = ("intersect", "attention", "noise")


@dataclass(frozen=True)
class Concept:
    """One concept: its text, guidance scale, direction, and optional per-concept overrides."""

    text: str
    scale: float = 5.0
    remove: bool = False              # guide away from the concept (SEGA's reverse direction)
    warmup: int | None = None         # None: the editor's ``warmup``
    threshold: float | None = None    # None: the editor's ``threshold``

    def __post_init__(self):
        if not isinstance(self.text, str) or not self.text.strip():
            raise VideditError(f"a sega concept needs a non-empty text, got {self.text!r}")
        if not 0 <= self.scale <= 100:
            raise VideditError(f"sega concept {self.text!r}: scale must be in [0, 100] (remove=true reverses "
                               f"the direction), got {self.scale}")
        if self.warmup is not None and self.warmup < 0:
            raise VideditError(f"sega concept {self.text!r}: warmup must be >= 0 steps, got {self.warmup}")
        if self.threshold is not None and not 0 <= self.threshold < 1:
            raise VideditError(f"sega concept {self.text!r}: threshold must be in [0, 1), got {self.threshold}")


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
            raise VideditError(f"a sega concept does not take {', '.join(map(str, unknown))}; "
                               f"it takes {sorted(fields)}")
        if "text" not in value:
            raise VideditError(f"a sega concept needs a text, got {dict(value)}")
        return Concept(**value)
    raise VideditError(f"a sega concept is a text or a mapping like {{text: glasses, scale: 5}}, got {value!r}")


@dataclass(frozen=True)
class SegaConfig:
    concepts: Sequence[Concept] = ()  # each a Concept, a text, or a mapping {text, scale, remove, warmup, threshold}
    warmup: int = 0                   # steps without guidance (per concept unless it overrides)
    cooldown: int | None = None       # no guidance from this step on (None: to the end)
    threshold: float = 0.9            # keep the top (1 - threshold) of each mask's values
    masking: str = "intersect"        # "intersect" (LEDITS++), "attention", or "noise" (SEGA)
    intersect_t: int = 800            # "intersect": the noise mask joins at timesteps <= this
    momentum: float = 0.0             # SEGA's momentum scale s_m (0 = off)
    momentum_beta: float = 0.4        # SEGA's momentum decay beta_m
    mask: MaskSource | None = None    # a user mask (path or tensor, 1 = edit) multiplying the guidance
    attention_layers: str = "*"       # glob over the cross-attention layers read for attention masks

    def __post_init__(self):
        concepts = self.concepts
        if isinstance(concepts, (str, Mapping, Concept)):
            concepts = [concepts]
        object.__setattr__(self, "concepts", tuple(as_concept(c) for c in concepts))
        if self.warmup < 0:
            raise VideditError(f"sega warmup must be >= 0 steps, got {self.warmup}")
        if self.cooldown is not None and self.cooldown <= self.warmup:
            raise VideditError(f"sega cooldown ({self.cooldown}) must come after warmup ({self.warmup}); "
                               f"None guides to the end")
        if not 0 <= self.threshold < 1:
            raise VideditError(f"sega threshold must be in [0, 1) (0.9 keeps the top 10%), got {self.threshold}")
        if self.masking not in MASKING:
            raise VideditError(f"sega masking must be one of {MASKING}, got {self.masking!r}")
        if self.intersect_t < 0:
            raise VideditError(f"sega intersect_t must be a timestep >= 0, got {self.intersect_t}")
        if self.momentum < 0:
            raise VideditError(f"sega momentum must be >= 0 (0 = off), got {self.momentum}")
        if not 0 <= self.momentum_beta < 1:
            raise VideditError(f"sega momentum_beta must be in [0, 1), got {self.momentum_beta}")
        validate_mask_source(self.mask, "sega mask")


class ConceptAttention(CrossAttentionStore):
    """A :class:`CrossAttentionStore` that records only the concept calls (``active``), one
    step at a time (:meth:`reset` before each). It asks for explicit probabilities only while
    recording, so the loop's own calls keep the fused attention (and plain's numbers)."""

    def __init__(self, n_tokens: int, n_frames: int, layers: str):
        super().__init__(tokens=range(1, 1 + n_tokens), n_frames=n_frames, layers=layers)  # token 0 is <start>
        self.active = False

    @property
    def needs_probs(self) -> bool:
        return self.active

    def probs(self, call, p):
        return super().probs(call, p) if self.active else p

    def reset(self) -> None:
        self.total = None
        self.count.zero_()


class SemanticGuidance(StepCallback):
    """Adds sum_i psi_i to the loop's guided prediction (see the module docstring)."""

    def __init__(self, unet, embeds: torch.Tensor, n_tokens: Sequence[int], concepts: Sequence[Concept],
                 config: SegaConfig, uncond: torch.Tensor, info: CallInfo, *, n_frames: int, start_step: int,
                 batch_size: int, store: ConceptAttention | None = None, user_mask: torch.Tensor | None = None,
                 out_is_uncond: bool = False):
        self.unet, self.embeds, self.n_tokens = unet, embeds, list(n_tokens)  # embeds (k, L, D)
        self.concepts, self.config, self.uncond, self.info = list(concepts), config, uncond, info
        self.n_frames, self.start_step, self.batch_size = n_frames, start_step, batch_size
        self.store, self.user_mask = store, user_mask
        self.out_is_uncond = out_is_uncond             # unguided, target = negative prompt: out is eps(uncond)
        self.eps_uncond: torch.Tensor | None = None   # (nb, F, C, h, w): the loop's unconditional output
        self.fresh = False                             # eps_uncond belongs to the model call in flight
        self.velocity: torch.Tensor | None = None      # SEGA momentum v

    # -- which concepts act when
    def _warmup(self, c: Concept) -> int:
        return self.config.warmup if c.warmup is None else c.warmup

    def _active(self, c: Concept, i: int) -> bool:
        return self._warmup(c) <= i and (self.config.cooldown is None or i < self.config.cooldown)

    def on_guidance(self, ctx, frames, uncond, cond):
        nb = uncond.shape[0]
        if self.eps_uncond is None or self.eps_uncond.shape[0] != nb:
            self.eps_uncond = uncond.new_zeros(nb, self.n_frames, *uncond.shape[2:])  # (nb, F, C, h, w)
        self.eps_uncond[:, list(frames)] = uncond
        self.fresh = True
        return uncond, cond

    def on_noise(self, ctx: StepContext, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        i = ctx.step - self.start_step
        active = [self._active(c, i) for c in self.concepts]
        momentum = self.config.momentum > 0
        fresh, self.fresh = self.fresh, False
        needed = [j for j in range(len(self.concepts)) if active[j] or momentum]  # momentum builds up in warm-up
        if not needed:
            return out                                   # warm-up or cool-down: the plain prediction
        eps_u = self.eps_uncond if fresh else out if self.out_is_uncond else None
        embeds = self.embeds[needed]                     # (m, L, D)
        if eps_u is None:                                # unguided: the unconditional prediction comes first
            embeds = torch.cat([self.uncond.to(embeds), embeds])
        preds = self._predict(x, ctx.timestep, embeds)   # (m, nb, F, C, h, w)
        maps = self._maps(preds.shape[0], x.shape[0]) if self.store is not None else None
        if eps_u is None:
            eps_u, preds, maps = preds[0], preds[1:], None if maps is None else maps[1:]
        applied, total = torch.zeros_like(out), torch.zeros_like(out)
        for k, j in enumerate(needed):
            c = self.concepts[j]
            psi = (preds[k] - eps_u) * (-c.scale if c.remove else c.scale)  # (nb, F, C, h, w)
            if self.user_mask is not None:
                psi = psi * self.user_mask.to(psi)
            psi = psi * self._mask(psi, None if maps is None else maps[k], j, c, ctx.timestep)
            total = total + psi
            if active[j]:
                applied = applied + psi
        if momentum:                                     # SEGA's momentum, built up from the first step
            v = self.velocity if self.velocity is not None else torch.zeros_like(total)
            total = total + self.config.momentum * v
            self.velocity = self.config.momentum_beta * v + (1 - self.config.momentum_beta) * total
            if all(active):
                applied = total
        return out + applied

    def _predict(self, x: torch.Tensor, timestep: int, embeds: torch.Tensor) -> torch.Tensor:
        """Model outputs for latents x (nb, F, C, h, w) under each of embeds (m, L, D):
        -> (m, nb, F, C, h, w), the m x nb pairs run as branches of one loop call."""
        m, nb = embeds.shape[0], x.shape[0]
        xs = x[None].expand(m, *x.shape).flatten(0, 1)                      # (m*nb, F, C, h, w)
        cond = embeds[:, None].expand(m, nb, *embeds.shape[1:]).flatten(0, 1)  # (m*nb, L, D)
        if self.store is not None:
            self.store.reset()
            self.store.active = True
        try:
            out = predict_noise(self.unet, xs, timestep, cond, None, (1.0,) * (m * nb),
                                batch_size=self.batch_size, info=self.info)
        finally:
            if self.store is not None:
                self.store.active = False
        return out.unflatten(0, (m, nb))

    def _maps(self, m: int, nb: int) -> torch.Tensor:
        """The concept calls' attention maps -> (m, nb, F, T, h, w)."""
        maps = self.store.maps()                                            # (m*nb, F, T, h, w)
        return maps.unflatten(0, (m, nb))

    def _mask(self, psi: torch.Tensor, maps: torch.Tensor | None, j: int, c: Concept, timestep: int) -> torch.Tensor:
        """M_i for psi (nb, F, C, h, w) -> (nb, F, 1, h, w) of 0/1."""
        threshold = self.config.threshold if c.threshold is None else c.threshold
        masking = self.config.masking
        noise_mask = None
        if masking == "noise" or (masking == "intersect" and timestep <= self.config.intersect_t):
            strength = psi.abs().sum(2, keepdim=True)                       # (nb, F, 1, h, w)
            noise_mask = _top(strength, threshold)
        if masking == "noise":
            return noise_mask
        a = maps[..., :self.n_tokens[j], :, :].sum(-3)                      # (nb, F, h, w): the concept's tokens
        nb, n_frames, h, w = a.shape
        a = gaussian_blur(a.reshape(nb * n_frames, 1, h, w)).view(nb, n_frames, 1, h, w)
        attn_mask = _top(a, threshold)
        return attn_mask if noise_mask is None else attn_mask * noise_mask


def _top(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """1 where values (nb, F, 1, h, w) reach their ``threshold`` quantile per (branch, frame)."""
    q = values.flatten(2).float().quantile(threshold, dim=-1)[..., None, None, None]  # (nb, F, 1, 1, 1)
    return (values >= q).to(values.dtype)


@register_editor("sega", SegaConfig)
def sega(ctx: EditContext, config: SegaConfig) -> EditPlan:
    """SEGA / LEDITS++ (Brack et al. 2023, 2024): add or remove concepts by masked semantic guidance."""
    plan = plain_plan(ctx)
    concepts = [c for c in config.concepts if c.scale != 0]
    if not concepts:
        return plan
    model, n_frames = ctx.model, ctx.inversion.noise.shape[0]
    embeds = model.encode_text([c.text for c in concepts])                  # (k, L, D)
    n_tokens = [max(1, len(model.tokens(c.text)) - 2) for c in concepts]    # without <start> and <end>
    info, store, processors = plan.info, None, None
    if config.masking != "noise":
        store = ConceptAttention(max(n_tokens), n_frames, config.attention_layers)
        processors = compose(model.unet, [store], info)
        if not processors:
            raise VideditError(f"sega attention_layers={config.attention_layers!r} matches no cross-attention "
                               f"layer; use '*' or masking='noise'")
    guidance = SemanticGuidance(model.unet, embeds, n_tokens, concepts, config, ctx.uncond, info, n_frames=n_frames,
                                start_step=ctx.inversion.start_step, batch_size=ctx.batch_size, store=store,
                                user_mask=editor_mask(ctx, config.mask),
                                out_is_uncond=ctx.guidance == 1 and torch.equal(ctx.target_cond, ctx.uncond))
    plan.callbacks, plan.processors = (guidance,), processors
    return plan
