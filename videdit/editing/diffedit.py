"""DiffEdit (Couairon, Verbeek, Schwenk & Cord 2023, "DiffEdit: Diffusion-based semantic
image editing with mask guidance", ICLR; Sec. 3.2): (1) a mask from where the source and
target prompts disagree about the noise, (2) DDIM-encode the source, (3) decode under the
target prompt, replacing the latent outside the mask by the encoded source at each step,

    M = binarise(mean_n |eps(x_r^n, target) - eps(x_r^n, source)|),
    y <- M * y + (1 - M) * x^source.

The authors released no code; the defaults follow diffusers'
``StableDiffusionDiffEditPipeline`` (``pipeline_stable_diffusion_diffedit.py``):

- step (1) is ``generate_mask``: :func:`videdit.editing.masks.mask_from_noise_difference` on
  the clean source latents, ``n_samples`` = 10 draws at ``mask_encode_strength`` = 0.5, the
  edit's guidance (7.5), the map clipped at ``clamp_ratio`` = 3 times its mean, scaled to
  [0, 1] and binarised at ``threshold`` = 0.5; a user ``mask`` replaces it (binarised at 0.5,
  as ``preprocess_mask`` does);
- step (2) is ``invert``: DDIM inversion under the source prompt at guidance 7.5
  (``--inversion ddim`` with ``guidance: 7.5``, ``configs/diffedit.yaml``) of the last
  ``inpaint_strength`` = 0.8 of 50 steps (the edit's strength);
- step (3) is ``__call__``: sampling from the inverted latent at the strength's first step;
  after step i the outside of the mask is the inverted latent at that step's own timestep,
  ``trajectory[i]`` (diffusers' ``image_latents[i]``), one level noisier than the latents the
  step landed on.

Step (3) uses the inversion's trajectory, whatever inversion ran. ``aligned_blend``
(videdit's option, off by default) blends with ``trajectory[i + 1]``, the level the step
landed on (the paper's equation): the last step then leaves the clean source latent outside
the mask, exactly (with an exact inversion, the source's reconstruction). ``dilate`` (videdit's,
default 0) grows the automatic mask.

If the automatic mask is empty in every frame (the prompts agree, e.g. target = source),
there is nothing to edit: DiffEdit then adds nothing to plain sampling, so the identity
edit is the inversion's own reconstruction. Costs 2 * ``n_samples`` guided UNet
evaluations per frame for the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videdit.editing.blended import SourceBlend, editor_mask, plain_plan
from videdit.editing.masks import MaskSource, dilate_mask, mask_from_noise_difference, validate_mask_source
from videdit.editing.registry import EditContext, EditPlan, register_editor
from videdit.errors import VideditError
from videdit.registry import improved


@dataclass(frozen=True)
class DiffEditConfig:
    mask: MaskSource | None = None     # image/.npy path or tensor, 1 = edit; None = DiffEdit's automatic mask
    mask_encode_strength: float = 0.5  # noise level of the mask estimate (diffusers' generate_mask)
    n_samples: int = 10                # noise draws averaged for the mask (num_maps_per_mask)
    clamp_ratio: float = 3.0           # the difference map is clipped at this times its mean ...
    threshold: float = 0.5             # ... scaled to [0, 1] and binarised here
    dilate: int = 0                    # grow the automatic mask by this many latent pixels
    aligned_blend: bool = improved(
        False, better=True,
        why="blend with the inverted source at the level each step lands on (the paper's equation) rather "
            "than one step behind: the background ends as the clean source latents exactly")

    def __post_init__(self):
        validate_mask_source(self.mask, "diffedit mask")
        if not 0 < self.mask_encode_strength <= 1:
            raise VideditError(f"diffedit mask_encode_strength must be in (0, 1] (diffusers uses 0.5), "
                               f"got {self.mask_encode_strength}")
        if self.n_samples < 1:
            raise VideditError(f"diffedit n_samples must be >= 1 (diffusers uses 10), got {self.n_samples}")
        if self.clamp_ratio <= 0:
            raise VideditError(f"diffedit clamp_ratio must be > 0 (diffusers uses 3), got {self.clamp_ratio}")
        if not 0 <= self.threshold < 1:
            raise VideditError(f"diffedit threshold must be in [0, 1) (diffusers uses 0.5), got {self.threshold}")
        if self.dilate < 0:
            raise VideditError(f"diffedit dilate must be >= 0 latent pixels, got {self.dilate}")


@register_editor("diffedit", DiffEditConfig, steps=50, guidance=7.5, strength=0.8,
                 reference="Couairon et al., DiffEdit (ICLR 2023); no official code: diffusers' "
                           "StableDiffusionDiffEditPipeline (generate_mask, invert, __call__)")
def diffedit(ctx: EditContext, config: DiffEditConfig) -> EditPlan:
    """DiffEdit (Couairon et al. 2023, Sec. 3.2): a mask where the prompts' noise estimates differ, then blending."""
    plan = plain_plan(ctx)
    mask = editor_mask(ctx, config.mask)
    if mask is None:
        model = ctx.model
        mask = mask_from_noise_difference(
            model.unet, ctx.inversion.source, ctx.source_cond, ctx.target_cond, ctx.uncond, ctx.schedule,
            prediction_type=model.prediction_type, encode_ratio=config.mask_encode_strength,
            n_samples=config.n_samples, guidance=ctx.guidance, clamp_ratio=config.clamp_ratio,
            threshold=config.threshold, seed=ctx.seed, batch_size=ctx.batch_size)
        mask = dilate_mask(mask, config.dilate)
        if not mask.any():
            return plan                                       # the prompts agree: nothing to edit
    keep = (mask < 0.5).to(mask.dtype)                       # (F or 1, 1, h, w), binary as preprocess_mask makes it

    def keep_at(step: int) -> torch.Tensor:
        return keep

    plan.callbacks = (SourceBlend(ctx.inversion.trajectory, keep_at, offset=1 if config.aligned_blend else 0),)
    return plan
