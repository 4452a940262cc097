"""Plain regeneration: sample from the inverted noise under the target prompt."""

from __future__ import annotations

from dataclasses import dataclass

from videdit.core.loop import Branches
from videdit.editing.registry import EditContext, EditPlan, register_editor


@dataclass(frozen=True)
class PlainConfig:
    pass


@register_editor("plain", PlainConfig, reference="Song et al. 2021, DDIM (ICLR): sampling from the inverted noise "
                 "under the target prompt, as diffusers' StableDiffusionPipeline with latents=")
def plain(ctx: EditContext, config: PlainConfig) -> EditPlan:
    """Regenerate from the inverted noise under the target prompt (no intervention)."""
    return EditPlan(
        x=ctx.inversion.noise[None],  # (1, F, C, h, w)
        branches=Branches(cond=ctx.target_cond, uncond=ctx.uncond, guidance=(ctx.guidance,)),
    )
