"""Prompts, masks and edits shared by the blending and score editors' tests (blended, diffedit,
differential, sega) and the masks' tests, on tiny-random with real frames."""

import dataclasses

import torch

from videdit.core import denoise, make_schedule
from videdit.pipeline import edit_latents

STEPS = 4
SOURCE, TARGET = "a wolf in a forest", "a robot wolf in a snowy forest"
LATENT = (8, 8)      # tiny-random latents of 64x64 frames
FRAMES = (64, 64)


def edit(tiny, s, inv, editor, **params):
    return edit_latents(tiny, inv, dataclasses.replace(s, editor=editor, editor_params=params))


def left_half() -> torch.Tensor:
    m = torch.zeros(1, 1, *LATENT)
    m[..., : LATENT[1] // 2] = 1
    return m


def from_step(tiny, s, inv, start):
    """Plain sampling under the target prompt from trajectory[start] at step start (DDIM)."""
    sched = make_schedule(tiny.scheduler_config, STEPS)
    target, neg = tiny.encode_text([s.target_prompt, s.negative_prompt]).chunk(2)
    from videdit.core import Branches

    return denoise(tiny.unet, inv.trajectory[start][None], sched, Branches(target, neg, (s.guidance,)),
                   start_step=start)[0]
