"""Blended latent diffusion (Avrahami, Fried & Lischinski 2023, "Blended Latent Diffusion",
SIGGRAPH / ACM TOG; Alg. 1): after every denoising step, the latent outside the user's mask
is replaced by the source latent noised to the step's level,

    z <- m * z + (1 - m) * z^source,

so the edit happens inside the mask and the background is the source's.

Defaults follow omriav/blended-latent-diffusion, ``scripts/text_editing_SD2.py``
(``BlendedLatnetDiffusion.edit_image`` and ``_read_mask``):

- the mask is resized to latent size by nearest neighbour (PIL's ``NEAREST``) and binarised at
  0.5 (1 = edit);
- sampling skips the first ``blending_percentage`` = 25% of 50 DDIM steps (guidance 7.5) and
  starts from seeded Gaussian noise, not from the inversion: the script skips int(0.25 * 50) =
  12 steps, which diffusers' strength rule (N - int(N * strength)) gives at strength 0.76;
- after step i, z^source = sqrt(a_t) z0 + sqrt(1 - a_t) n_i with a fresh draw n_i ~ N(0, I)
  each step, at the step's own timestep t = ``timesteps[i]`` (the script's
  ``add_noise(source_latents, randn_like(latents), t)``), one level noisier than the latents
  the step landed on. The draws come from one generator seeded with the edit's seed: the
  start noise first, then one per step, as the script's draws share torch's global generator.

The script edits one image; for a clip every frame gets the same draws (:func:`noise_generator`),
so each frame's edit is the script's edit of that frame alone, whatever frames share its window.

The inversion gives only the clean source latents z0 (``inversion.source``). The script's
scheduler has ``steps_offset`` 0 (``configs/blended.yaml`` sets it).

``from_inversion`` (videdit's option, off by default): start from the inverted noise and take
z^source from the inversion's trajectory at the level each step lands on
(``trajectory[i + 1]``): deterministic, the background ends as the clean source latent
``trajectory[-1]`` exactly (with an exact inversion, the source's reconstruction), and more of
the source survives inside the mask, which weakens inserting new objects. ``blend_until`` < 1
(videdit's; the script blends at every step) lets the last steps run unblended, which softens
seams. No mask: edit everywhere, i.e. plain regeneration from the inversion (the script
requires a mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from videdit.core.loop import StepCallback, StepContext
from videdit.core.schedule import Schedule
from videdit.editing.masks import MaskSource, frames_shape, load_mask, validate_mask_source
from videdit.editing.plain import PlainConfig, plain
from videdit.editing.registry import EditContext, EditPlan, register_editor
from videdit.errors import VideditError
from videdit.registry import improved

# step index -> weight of the source (F or 1, 1, h, w) in [0, 1] after that step, or None (no blend)
KeepAt = Callable[[int], torch.Tensor | None]


class SourceBlend(StepCallback):
    """After step i: x <- keep * trajectory[i + offset] + (1 - keep) * x, for every branch.
    ``keep_at(i)`` gives the source's weight (F or 1, 1, h, w), or None to leave x alone.
    ``offset`` 1: the source at the level the step landed on; 0: at the level it started from
    (diffusers' DiffEdit)."""

    def __init__(self, trajectory: torch.Tensor, keep_at: KeepAt, offset: int = 1):
        self.trajectory, self.keep_at, self.offset = trajectory, keep_at, offset   # trajectory (N+1, F, C, h, w)

    def on_step_end(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        keep = self.keep_at(ctx.step)
        if keep is None:
            return x
        source = self.trajectory[ctx.step + self.offset].to(x)   # (F, C, h, w), broadcast over branches
        keep = keep.to(x)                                     # (F or 1, 1, h, w)
        return keep * source + (1 - keep) * x                 # exact where keep is 0 or 1


class RenoisedSourceBlend(StepCallback):
    """After step i: x <- keep * (sqrt(a) z0 + sqrt(1 - a) n) + (1 - keep) * x with a = alpha-bar
    at ``timesteps[i]`` and a fresh n ~ N(0, I) (1, C, h, w), every frame's, from ``generator`` at
    each step (blended latent diffusion's official re-noising). ``keep_at`` as for :class:`SourceBlend`."""

    def __init__(self, source: torch.Tensor, schedule: Schedule, keep_at: KeepAt, generator: torch.Generator):
        self.source, self.schedule, self.keep_at, self.generator = source, schedule, keep_at, generator   # (F, C, h, w)

    def on_step_end(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        keep = self.keep_at(ctx.step)
        if keep is None:
            return x
        noise = frame_noise(self.source, self.generator)    # (1, C, h, w)
        source = forward_noised(self.source.to(x), noise, float(self.schedule.alphas[ctx.step]))   # (F, C, h, w)
        keep = keep.to(x)                                     # (F or 1, 1, h, w)
        return keep * source + (1 - keep) * x


def plain_plan(ctx: EditContext) -> EditPlan:
    """The plain editor's plan (the inverted noise under the target prompt, one branch), which
    the blending and score editors add their callbacks to."""
    return plain(ctx, PlainConfig())


def editor_mask(ctx: EditContext, value: MaskSource | None, resize: str | None = None) -> torch.Tensor | None:
    """An editor's ``mask`` option at this edit's latent size -> (F or 1, 1, h, w) or None;
    ``resize``: the interpolation (:func:`videdit.masks.upsample_mask`; None: videdit's)."""
    noise = ctx.inversion.noise                               # (F, C, h, w)
    latent_size, frame_size = frames_shape(noise, ctx.model.vae_scale_factor)
    frame_size = ctx.frame_size or frame_size                 # the input's size, before model-size rounding
    mask = load_mask(value, latent_size, frame_size=frame_size, n_frames=noise.shape[0], resize=resize)
    return None if mask is None else mask.to(noise.device)


def noise_generator(ctx: EditContext) -> torch.Generator:
    """The generator of an editor's own noise: on the CPU, seeded with the edit's seed, so every
    device draws the same numbers, and every window of a clip the same draws."""
    return torch.Generator().manual_seed(ctx.seed)


def forward_noised(source: torch.Tensor, noise: torch.Tensor, alpha: float) -> torch.Tensor:
    """The forward process q(z_t | z0) (diffusers' ``add_noise``): sqrt(a) z0 + sqrt(1 - a) n at
    alpha-bar ``alpha``, for ``source`` (F, C, h, w) and ``noise`` broadcast to it."""
    return alpha ** 0.5 * source + (1 - alpha) ** 0.5 * noise


def frame_noise(latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw of N(0, I) noise of one frame of ``latents`` (F, C, h, w) -> (1, C, h, w), on
    their device: the reference codes edit one image, and every frame of a clip gets this same
    draw, so a frame's edit does not depend on the frames edited with it."""
    return torch.randn((1, *latents.shape[1:]), generator=generator, dtype=torch.float32).to(latents)


@dataclass(frozen=True)
class BlendedConfig:
    mask: MaskSource | None = None   # image/.npy path or tensor, 1 = edit (binarised at 0.5); None = edit everywhere
    blend_until: float = 1.0         # blend during this fraction of the sampled steps
    from_inversion: bool = improved(
        False, better=True,
        why="start from the inverted noise and blend with the inversion's trajectory at the level each step "
            "lands on: deterministic, the background ends as the source latents exactly, and more of the "
            "source is kept inside the mask (weaker object insertion)")

    def __post_init__(self):
        validate_mask_source(self.mask, "blended mask")
        if not 0 <= self.blend_until <= 1:
            raise VideditError(f"blended blend_until must be a fraction of the steps in [0, 1] "
                               f"(1 = blend at every step), got {self.blend_until}")


@register_editor("blended", BlendedConfig, steps=50, guidance=7.5, strength=0.76,
                 reads_inversion=lambda config: config.mask is None or config.from_inversion,
                 source_only="with a mask and from_inversion=false, after an inversion that replays as plain DDIM: "
                             "inverts nothing (its start is its own noise)",
                 reference="Avrahami et al., Blended Latent Diffusion (SIGGRAPH 2023); "
                           "github.com/omriav/blended-latent-diffusion scripts/text_editing_SD2.py")
def blended(ctx: EditContext, config: BlendedConfig) -> EditPlan:
    """Blended latent diffusion (Avrahami et al. 2023, Alg. 1): outside the mask, the re-noised source."""
    plan = plain_plan(ctx)
    mask = editor_mask(ctx, config.mask, resize="nearest-exact")
    if mask is None:
        return plan
    keep = (mask < 0.5).to(mask.dtype)                       # the script's _read_mask: binary, 1 = edit
    start = ctx.inversion.start_step
    last = start + round(config.blend_until * (len(ctx.schedule) - start))   # steps start .. last-1 are blended

    def keep_at(step: int) -> torch.Tensor | None:
        return keep if step < last else None

    if config.from_inversion:
        plan.callbacks = (SourceBlend(ctx.inversion.trajectory, keep_at),)
        return plan
    generator = noise_generator(ctx)
    source = ctx.inversion.source                             # (F, C, h, w)
    plan.x = frame_noise(source, generator).expand_as(source).contiguous()[None]   # (1, F, C, h, w)
    plan.callbacks = (RenoisedSourceBlend(source, ctx.schedule, keep_at, generator),)
    return plan
