"""Differential diffusion (Levin & Fried 2024, "Differential Diffusion: Giving Each Pixel Its
Strength"; Alg. 1): a soft change map m in [0, 1] says how much each pixel may change. A
pixel is held on the source trajectory until the fraction r of the steps done passes
1 - m, then released to the edit:

    after step i (r = (i + 1) / N):  z <- s * z^source_{i+1} + (1 - s) * z,   s = [m <= 1 - r]

so m = 1 is edited from the first step, m = 0 never (the source, as blended diffusion
keeps its background), and m = 0.5 over the second half of the schedule only. A binary map
is exactly blended latent diffusion with that mask (:mod:`videdit.editing.blended`).

Deviations: z^source is the inversion's trajectory (as in :mod:`~videdit.editing.blended`),
not a forward-noised copy of the source; the paper releases a pixel when r >= 1 - m, here
when r > 1 - m, so that m = 0 is also held after the last step (the paper lets it run one
free step) and binary maps equal blended diffusion. With an inversion that skips steps
(``inversion.start_step`` > 0) the thresholds still count the whole schedule.
No map: edit everywhere (plain regeneration).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videdit.editing.blended import SourceBlend, editor_mask, plain_plan
from videdit.editing.masks import MaskSource, validate_mask_source
from videdit.editing.registry import EditContext, EditPlan, register_editor


@dataclass(frozen=True)
class DifferentialConfig:
    mask: MaskSource | None = None   # the change map: image/.npy path or tensor, 1 = change fully, 0 = keep

    def __post_init__(self):
        validate_mask_source(self.mask, "differential change map (mask)")


@register_editor("differential", DifferentialConfig)
def differential(ctx: EditContext, config: DifferentialConfig) -> EditPlan:
    """Differential diffusion (Levin & Fried 2024, Alg. 1): per-pixel change amounts from a soft map."""
    plan = plain_plan(ctx)
    change = editor_mask(ctx, config.mask)                    # (F or 1, 1, h, w)
    if change is None:
        return plan
    n_steps = len(ctx.schedule)

    def keep_at(step: int) -> torch.Tensor:
        return (change <= 1 - (step + 1) / n_steps).to(change.dtype)  # held on the source until released

    plan.callbacks = (SourceBlend(ctx.inversion.trajectory, keep_at),)
    return plan
