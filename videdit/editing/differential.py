"""Differential diffusion (Levin & Fried 2024, "Differential Diffusion: Giving Each Pixel Its
Strength"; Alg. 1): a soft map m in [0, 1] says how long each pixel is held on the source.
Before sampling step k of the n steps run, a pixel with m > k / n is replaced by the source
forward-noised to that step's timestep:

    z_k <- s * (sqrt(a_k) z0 + sqrt(1 - a_k) n) + (1 - s) * z_k,   s = [m > k / n],

with one noise draw n ~ N(0, I) for every step, and sampling starts from the noised source
z_0 = sqrt(a_0) z0 + sqrt(1 - a_0) n (not from the inversion). So m = 1 keeps the pixel (held
up to the last step, which only denoises the source from the last timestep), m = 0 changes it
freely, and m = 0.5 lets it change over about the second half of the schedule.

Defaults follow exx8/differential-diffusion, ``SD2/diff_pipe.py``
(``StableDiffusionDiffImg2ImgPipeline.__call__`` and ``prepare_latents``): the map's
convention (1 = white = keep), its resize to latent size (torchvision's bilinear ``Resize``
without antialiasing), the thresholds ``arange(n) / n`` and the noise drawn once;
``SD2/run.py`` runs 100 steps at guidance 7 (``configs/differential.yaml``). The inversion
gives only the clean source latents z0 (``inversion.source``); the noise comes from a
generator seeded with the edit's seed, the same draw for every frame of a clip (the official
code edits one image), so a frame's edit does not depend on the frames edited with it. With a
strength below 1 the thresholds count the steps run, as the official pipeline's
``get_timesteps`` cut does.

The map is the ``map`` option, as the official tool takes it: a map made for the official
tool gives the same edit here. ``mask`` takes the same information in videdit's mask
convention (``--mask``: white = change, black = keep), i.e. ``map = 1 - mask``.

``from_inversion`` (videdit's option, off by default): start from the inverted noise, hold
the pixels on the inversion's trajectory at the level each step lands on, and hold a pixel
while m >= (k + 1) / n after step k, the last step included: the kept pixels (m = 1) end as
the source latents exactly and m = 0.5 is sampled over exactly half the steps; a binary map
is then blended diffusion's ``from_inversion`` with mask 1 - m. No map: edit everywhere
(plain regeneration from the inversion).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videdit.core.loop import StepCallback, StepContext
from videdit.core.schedule import Schedule
from videdit.editing.blended import (SourceBlend, editor_mask, forward_noised, frame_noise, noise_generator,
                                     plain_plan)
from videdit.editing.masks import MaskSource, validate_mask_source
from videdit.editing.registry import EditContext, EditPlan, register_editor
from videdit.errors import VideditError
from videdit.registry import improved


class NoisedSourceHold(StepCallback):
    """After step ``start + k``, before step i = ``start + k + 1``: where ``hold[k + 1]``
    (map > (k + 1) / n), the latents are the source z0 (F, C, h, w) forward-noised to
    ``timesteps[i]`` with the one draw ``noise`` (1, C, h, w); after the last step, nothing."""

    def __init__(self, source: torch.Tensor, noise: torch.Tensor, schedule: Schedule, hold: torch.Tensor, start: int):
        self.source, self.noise, self.schedule = source, noise, schedule
        self.hold, self.start = hold, start                   # hold (n, F or 1, 1, h, w) bool

    def on_step_end(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        k = ctx.step - self.start + 1                         # the run index of the next step
        if k >= len(self.hold):
            return x
        keep = self.hold[k].to(x)                             # (F or 1, 1, h, w)
        source = forward_noised(self.source, self.noise, float(self.schedule.alphas[ctx.step + 1])).to(x)
        return keep * source + (1 - keep) * x


@dataclass(frozen=True)
class DifferentialConfig:
    map: MaskSource | None = None    # the official tool's map: image/.npy path or tensor, 1 (white) = keep, 0 = change
    mask: MaskSource | None = None   # the same in videdit's mask convention (--mask): 1 (white) = change; 1 - map
    from_inversion: bool = improved(
        False, better=True,
        why="start from the inverted noise and hold pixels on the inversion's trajectory through the last "
            "step: deterministic, kept pixels end as the source latents exactly, and a map value m is "
            "sampled over exactly 1 - m of the steps")

    def __post_init__(self):
        validate_mask_source(self.map, "differential map")
        validate_mask_source(self.mask, "differential mask")
        if self.map is not None and self.mask is not None:
            raise VideditError("differential takes the change map once: map (the official convention, 1 = keep) "
                               "or mask (videdit's, 1 = change), not both")


@register_editor("differential", DifferentialConfig, steps=100, guidance=7.0, strength=1.0,
                 reads_inversion=lambda config: (config.map is None and config.mask is None) or config.from_inversion,
                 source_only="with a map or mask and from_inversion=false, after an inversion that replays as plain "
                             "DDIM: inverts nothing (its start is its own noise)",
                 reference="Levin & Fried, Differential Diffusion: Giving Each Pixel Its Strength (2024); "
                           "github.com/exx8/differential-diffusion SD2/diff_pipe.py")
def differential(ctx: EditContext, config: DifferentialConfig) -> EditPlan:
    """Differential diffusion (Levin & Fried 2024, Alg. 1): per-pixel change amounts from a soft map."""
    plan = plain_plan(ctx)
    given = config.map if config.map is not None else config.mask
    m = editor_mask(ctx, given, resize="bilinear")            # (F or 1, 1, h, w)
    if m is None:
        return plan
    if config.map is None:
        m = 1 - m                                             # videdit's mask (1 = change) -> the map (1 = keep)
    start = ctx.inversion.start_step
    n = len(ctx.schedule) - start                             # the steps run
    if config.from_inversion:
        def keep_at(step: int) -> torch.Tensor:
            return (m >= (step - start + 1) / n).to(m.dtype)  # held until released, the last step included

        plan.callbacks = (SourceBlend(ctx.inversion.trajectory, keep_at),)
        return plan
    z0 = ctx.inversion.source                                 # (F, C, h, w)
    noise = frame_noise(z0, noise_generator(ctx))             # (1, C, h, w): every frame's, every step's
    thresholds = (torch.arange(n, dtype=m.dtype, device=m.device) / n).view(n, 1, 1, 1, 1)
    hold = m[None] > thresholds                               # (n, F or 1, 1, h, w)
    plan.x = forward_noised(z0, noise, float(ctx.schedule.alphas[start]))[None]   # (1, F, C, h, w)
    plan.callbacks = (NoisedSourceHold(z0, noise, ctx.schedule, hold, start),)
    return plan
