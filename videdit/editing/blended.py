"""Blended latent diffusion (Avrahami, Fried & Lischinski 2023, "Blended Latent Diffusion",
SIGGRAPH / ACM TOG; Alg. 1): after every denoising step, the latent outside the user's mask
is replaced by the source latent at the noise level the step landed on,

    z_t <- m * z_t + (1 - m) * z_t^source,

so the edit happens inside the mask and the background is the source's.

Deviation from the paper: z_t^source is the inversion's own trajectory
(``inversion.trajectory[i + 1]``) rather than a fresh forward-noised copy of the source.
That keeps the edit deterministic and the background consistent with the latents the
inversion gives the sampler; with an exact inversion (EDICT, BDIA, DDPM, ...) the
background is exactly the source reconstruction, and at the last step it is the clean
source latent ``trajectory[-1]`` for every inversion. The paper's optional background
repair in pixel space (decoder fine-tuning) is not done. ``blend_until`` < 1 lets the last
steps run unblended, which softens seams.

The mask is (F or 1, 1, h, w) at latent resolution (see :mod:`videdit.editing.masks`);
soft values blend proportionally. No mask: edit everywhere, i.e. plain regeneration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from videdit.core.loop import StepCallback, StepContext
from videdit.editing.masks import MaskSource, frames_shape, load_mask, validate_mask_source
from videdit.editing.plain import PlainConfig, plain
from videdit.editing.registry import EditContext, EditPlan, register_editor
from videdit.errors import VideditError

# step index -> weight of the source (F or 1, 1, h, w) in [0, 1] after that step, or None (no blend)
KeepAt = Callable[[int], torch.Tensor | None]


class SourceBlend(StepCallback):
    """After step i: x <- keep * trajectory[i + 1] + (1 - keep) * x, for every branch.
    ``keep_at(i)`` gives the source's weight (F or 1, 1, h, w), or None to leave x alone."""

    def __init__(self, trajectory: torch.Tensor, keep_at: KeepAt):
        self.trajectory, self.keep_at = trajectory, keep_at   # trajectory (N+1, F, C, h, w)

    def on_step_end(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        keep = self.keep_at(ctx.step)
        if keep is None:
            return x
        source = self.trajectory[ctx.step + 1].to(x)          # (F, C, h, w), broadcast over branches
        keep = keep.to(x)                                     # (F or 1, 1, h, w)
        return keep * source + (1 - keep) * x                 # exact where keep is 0 or 1


def plain_plan(ctx: EditContext) -> EditPlan:
    """The plain editor's plan (the inverted noise under the target prompt, one branch), which
    the blending and score editors add their callbacks to."""
    return plain(ctx, PlainConfig())


def editor_mask(ctx: EditContext, value: MaskSource | None) -> torch.Tensor | None:
    """An editor's ``mask`` option at this edit's latent size -> (F or 1, 1, h, w) or None."""
    noise = ctx.inversion.noise                               # (F, C, h, w)
    latent_size, frame_size = frames_shape(noise, ctx.model.vae_scale_factor)
    frame_size = ctx.frame_size or frame_size                 # the input's size, before model-size rounding
    mask = load_mask(value, latent_size, frame_size=frame_size, n_frames=noise.shape[0])
    return None if mask is None else mask.to(noise.device)


@dataclass(frozen=True)
class BlendedConfig:
    mask: MaskSource | None = None   # image/.npy path or tensor, 1 = edit; None = edit everywhere
    blend_until: float = 1.0         # blend during this fraction of the schedule's steps

    def __post_init__(self):
        validate_mask_source(self.mask, "blended mask")
        if not 0 <= self.blend_until <= 1:
            raise VideditError(f"blended blend_until must be a fraction of the steps in [0, 1] "
                               f"(1 = blend at every step), got {self.blend_until}")


@register_editor("blended", BlendedConfig)
def blended(ctx: EditContext, config: BlendedConfig) -> EditPlan:
    """Blended latent diffusion (Avrahami et al. 2023, Alg. 1): outside the mask, the source trajectory."""
    plan = plain_plan(ctx)
    mask = editor_mask(ctx, config.mask)
    if mask is None:
        return plan
    keep, n_steps = 1 - mask, len(ctx.schedule)
    last = round(config.blend_until * n_steps)                # steps 0 .. last-1 are blended

    def keep_at(step: int) -> torch.Tensor | None:
        return keep if step < last else None

    plan.callbacks = (SourceBlend(ctx.inversion.trajectory, keep_at),)
    return plan
