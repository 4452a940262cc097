"""Negative-prompt inversion (Miyake et al. 2023, "Negative-prompt Inversion: Fast Image
Inversion for Editing with Text-guided Diffusion Models", Sec. 3).

Null-text inversion's optimised unconditional embeddings stay close to the source prompt's
embedding C; NPI takes that limit, null_t := C for every t: invert with plain DDIM under the
source prompt (guidance 1) and, while editing, sample with

    eps = eps(z_t, t, C) + w * (eps(z_t, t, C_target) - eps(z_t, t, C)).

With target prompt = source prompt, cond == uncond, so every guidance scale reduces to
the guidance-1 DDIM sampler, which retraces the inversion. No optimisation; editing costs what DDIM costs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from videdit.inversion.ddim import DDIMInversionConfig, ddim_inversion
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, Replay, ReplayContext, register_inversion


@dataclass(frozen=True)
class NegativePromptConfig:
    """NPI has no options: the inversion is guidance-1 DDIM under the source prompt."""


def source_as_uncond(inv: Inversion, ctx: ReplayContext, config) -> Replay:
    """Replay: the source prompt's embedding (1, L, D) replaces the unconditional one."""
    return Replay(uncond=ctx.source_cond)


@register_inversion("npi", NegativePromptConfig, replay=source_as_uncond,
                    reference="Miyake et al. 2023, Negative-prompt Inversion (arXiv 2305.16807); no official code")
def negative_prompt_inversion(inp: InversionInputs, config: NegativePromptConfig) -> Inversion:
    """Negative-prompt inversion (Miyake et al. 2023): DDIM inversion; edit with the source prompt as uncond."""
    return dataclasses.replace(ddim_inversion(inp, DDIMInversionConfig(guidance=1.0)), method="npi")
