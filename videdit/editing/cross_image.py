"""Cross-image attention: structure from the input, appearance from another image (Alaluf et al. 2024).

"Cross-Image Attention for Zero-Shot Appearance Transfer", SIGGRAPH 2024, Sec. 4 (Eq. 2):
in the decoder's self-attention layers the output image attends with the structure image's
queries to the appearance image's keys and values,

    Attention(Q_struct, K_app, V_app) = softmax(Q_struct K_app^T / sqrt(d)) V_app.

Branches: 0 replays the input (the structure), 1 the appearance image, 2 is the output (it
starts from the input's inverted noise, as the reference's output latent starts from the
structure's). The appearance branch follows its own inversion's trajectory exactly: after
every step its latents are reset to that trajectory, so whatever the input's inversion
replays (null-text embeddings, offsets, samplers) cannot pull it off. ``queries="output"``
takes the output's own queries instead, as the released code does. From ``adain_start`` on,
the output latents are AdaIN-normalised to the appearance latents' per-channel statistics
after each step (the reference's ``adain_range``).

Cost: the pipeline inverts the appearance image with plain DDIM (the schedule's N steps on
one frame, under ``appearance_prompt``, through the inversion cache: the editor declares it
as a reference image) and hands it over in ``EditContext.references``; editing runs a third
branch over all frames (1.5x the UNet work of a two-branch editor). Without an appearance image (the
default) structure = appearance = the input: two branches, and the output's self-attention
at the chosen layers is the input's own, so an identity edit is the reconstruction.

Deviations from the released code: no contrast operation on the attention maps, no
structure/appearance swap every 5th step, no masked AdaIN or self-segmentation, and the
appearance is inverted with DDIM (the reference uses edit-friendly DDPM inversion).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videdit.attention import choose_layers, compose, patterns
from videdit.core.loop import Branches, CallInfo, StepCallback, StepContext
from videdit.editing.control import SOURCE, TARGET, InjectQKV, check_fraction, step_index, step_window
from videdit.editing.registry import EditContext, EditPlan, register_editor
from videdit.errors import VideditError

EDITOR = "cross_image"
QUERIES = ("structure", "output")


@dataclass(frozen=True)
class CrossImageConfig:
    appearance: Any = None             # path to an image, or an (H, W, 3) uint8 array; None: the input itself
    appearance_prompt: str = ""        # describes it: its inversion's and branch's prompt
    layers: tuple[str, ...] = ("up_blocks.[23].*attn1.processor",)   # SD's 32x32 and 64x64 decoder layers
    start: float = 0.1                 # cross-image attention from this fraction of the steps ...
    end: float = 0.9                   # ... to this one (the reference's 10..90 of 100)
    queries: str = "structure"         # "structure" (the paper's Q_struct) or "output" (the released code)
    adain_start: float = 0.2           # AdaIN of the output to the appearance from this fraction; 1 = never

    def __post_init__(self):
        for name in ("start", "end", "adain_start"):
            check_fraction(EDITOR, name, getattr(self, name))
        if self.end < self.start:
            raise VideditError(f"{EDITOR} end ({self.end}) must not be before start ({self.start})")
        if self.queries not in QUERIES:
            raise VideditError(f"{EDITOR} queries must be one of {QUERIES}, got {self.queries!r}")
        object.__setattr__(self, "layers", patterns(EDITOR, "layers", self.layers))
        a = self.appearance
        if isinstance(a, (str, Path)):
            if not Path(a).is_file():
                raise VideditError(f"{EDITOR} appearance image {str(a)!r} does not exist; give an image file")
        elif a is not None and not (isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 3
                                    and a.shape[2] == 3):
            raise VideditError(f"{EDITOR} appearance must be an image path or an (H, W, 3) uint8 array")


def adain(x: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """AdaIN (Huang & Belongie 2017): ``x`` (F, C, h, w) with the per-channel mean and std of ``style``."""
    mu, sd = x.mean((-2, -1), keepdim=True), x.std((-2, -1), keepdim=True) + eps
    mu_s, sd_s = style.mean((-2, -1), keepdim=True), style.std((-2, -1), keepdim=True) + eps
    return (x - mu) / sd * sd_s + mu_s


class FollowAppearance(StepCallback):
    """After each step: the appearance branch back on its inversion trajectory, and from
    ``adain_steps`` on, the output AdaIN-normalised to it."""

    def __init__(self, trajectory: torch.Tensor, branch: int, output: int, adain_steps: range):
        self.trajectory, self.branch, self.output, self.adain_steps = trajectory, branch, output, adain_steps

    def on_step_end(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[self.branch] = self.trajectory[ctx.step + 1].to(x)        # (F, C, h, w), broadcast from 1 frame
        if ctx.step in self.adain_steps:
            x[self.output] = adain(x[self.output], x[self.branch])
        return x


@register_editor(EDITOR, CrossImageConfig, source_branch=True, references={"appearance": "appearance_prompt"})
def cross_image(ctx: EditContext, config: CrossImageConfig) -> EditPlan:
    """Cross-image attention (Alaluf et al. 2024): structure's queries on an appearance image's keys and values."""
    unet, n = ctx.model.unet, len(ctx.schedule)
    noise = ctx.inversion.noise                                       # (F, C, h, w)
    g = ctx.guidance
    callbacks: list[StepCallback] = []
    if config.appearance is None:
        structure = appearance = SOURCE
        output = TARGET
        x = noise[None].repeat(2, 1, 1, 1, 1)                         # (2, F, C, h, w)
        cond = torch.cat([ctx.source_cond, ctx.target_cond])
    else:
        structure, appearance, output = 0, 1, 2
        app_cond = ctx.model.encode_text([config.appearance_prompt])  # (1, L, D)
        trajectory = ctx.references["appearance"].trajectory         # (N+1, 1, C, h, w)
        start = ctx.inversion.start_step
        x = torch.stack([noise, trajectory[start, 0].expand_as(noise).to(noise), noise])  # (3, F, C, h, w)
        cond = torch.cat([ctx.source_cond, app_cond.to(ctx.source_cond), ctx.target_cond])
        callbacks.append(FollowAppearance(trajectory, appearance, output, range(step_index(config.adain_start, n), n)))
    nb = x.shape[0]
    branches = Branches(cond=cond, uncond=ctx.uncond.expand(nb, *ctx.uncond.shape[1:]), guidance=(g,) * nb)
    layers = choose_layers(unet, config.layers, EDITOR, "layers", cross=False)
    q_from = structure if config.queries == "structure" else None
    module = InjectQKV(layers, step_window(config.start, config.end, n), output, q_from=q_from, k_from=appearance,
                       v_from=appearance)
    info = CallInfo()
    return EditPlan(x=x, branches=branches, callbacks=callbacks, processors=compose(unet, [module], info), info=info,
                    output_branch=output, source_branch=SOURCE)
