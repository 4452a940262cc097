"""DiffEdit (Couairon, Verbeek, Schwenk & Cord 2023, "DiffEdit: Diffusion-based semantic
image editing with mask guidance", ICLR; Sec. 3.2): (1) a mask from where the source and
target prompts disagree about the noise, (2) encode the source to the noise level r
(``encode_ratio``), (3) decode under the target prompt, replacing the latent outside the
mask by the encoded source at each step,

    M = binarise(mean_n |eps(x_r^n, target) - eps(x_r^n, source)|),
    y_t <- M * y_t + (1 - M) * x_t^source.

Step (1) is :func:`videdit.editing.masks.mask_from_noise_difference` on the clean source
latents, with ``n_samples`` draws at level r and diffusers' thresholding
(``clamp_ratio``, ``threshold``); a user ``mask`` bypasses it. Steps (2)-(3) use the
inversion's own trajectory, whatever inversion ran: sampling runs from the inversion's start
(``inversion.start_step``), and until the step at level r the whole latent is replaced by
the trajectory, which is the same as starting the edit from the encoded latent x_r (the
skipped steps' UNet evaluations are spent and discarded; set ``encode_ratio`` = 1 to edit
from the inversion's own start); from there on only the outside of the mask is.
The paper's step (2) is DDIM encoding; with ``--inversion ddim`` that is what
``trajectory[i]`` holds.

If the automatic mask is empty in every frame (the prompts agree, e.g. target = source),
there is nothing to edit: DiffEdit then adds nothing to plain sampling, so the identity
edit is the inversion's own reconstruction. Costs 2 * ``n_samples`` guided UNet
evaluations per frame for the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videdit.editing.blended import SourceBlend, editor_mask, plain_plan
from videdit.editing.masks import (MaskSource, dilate_mask, encode_step, mask_from_noise_difference,
                                  validate_mask_source)
from videdit.editing.registry import EditContext, EditPlan, register_editor
from videdit.errors import VideditError


@dataclass(frozen=True)
class DiffEditConfig:
    mask: MaskSource | None = None   # image/.npy path or tensor, 1 = edit; None = DiffEdit's automatic mask
    encode_ratio: float = 0.5        # noise level r of the mask estimate; the edit starts there
    n_samples: int = 10              # noise draws averaged for the mask
    clamp_ratio: float = 3.0         # the difference map is clipped at this times its mean ...
    threshold: float = 0.5           # ... scaled to [0, 1] and binarised here
    dilate: int = 0                  # grow the automatic mask by this many latent pixels

    def __post_init__(self):
        validate_mask_source(self.mask, "diffedit mask")
        if not 0 < self.encode_ratio <= 1:
            raise VideditError(f"diffedit encode_ratio must be in (0, 1] (the paper uses 0.5), got {self.encode_ratio}")
        if self.n_samples < 1:
            raise VideditError(f"diffedit n_samples must be >= 1 (the paper uses 10), got {self.n_samples}")
        if self.clamp_ratio <= 0:
            raise VideditError(f"diffedit clamp_ratio must be > 0 (diffusers uses 3), got {self.clamp_ratio}")
        if not 0 <= self.threshold < 1:
            raise VideditError(f"diffedit threshold must be in [0, 1) (the paper uses 0.5), got {self.threshold}")
        if self.dilate < 0:
            raise VideditError(f"diffedit dilate must be >= 0 latent pixels, got {self.dilate}")


@register_editor("diffedit", DiffEditConfig)
def diffedit(ctx: EditContext, config: DiffEditConfig) -> EditPlan:
    """DiffEdit (Couairon et al. 2023, Sec. 3.2): a mask where the prompts' noise estimates differ, then blending."""
    plan = plain_plan(ctx)
    mask = editor_mask(ctx, config.mask)
    if mask is None:
        model = ctx.model
        mask = mask_from_noise_difference(
            model.unet, ctx.inversion.source, ctx.source_cond, ctx.target_cond, ctx.uncond, ctx.schedule,
            prediction_type=model.prediction_type, encode_ratio=config.encode_ratio, n_samples=config.n_samples,
            guidance=ctx.guidance, clamp_ratio=config.clamp_ratio, threshold=config.threshold, seed=ctx.seed,
            batch_size=ctx.batch_size)
        mask = dilate_mask(mask, config.dilate)
        if not mask.any():
            return plan                                       # the prompts agree: nothing to edit
    start = encode_step(len(ctx.schedule), config.encode_ratio)
    everything = torch.ones_like(mask)
    keep = 1 - mask

    def keep_at(step: int) -> torch.Tensor:
        return everything if step + 1 <= start else keep       # the edit starts at level r

    plan.callbacks = (SourceBlend(ctx.inversion.trajectory, keep_at),)
    return plan
