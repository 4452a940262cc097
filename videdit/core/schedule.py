"""The discrete noise schedule of one sampling run, taken from the model's diffusers
scheduler config so that spacing, offsets and the final alpha match diffusers exactly."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from videdit.errors import VideditError


@dataclass(frozen=True)
class Schedule:
    """Sampling goes timesteps[0] -> ... -> timesteps[-1] -> clean.

    ``alphas[i]`` is alpha-bar at ``timesteps[i]``; ``alphas_prev[i]`` the one step ``i``
    lands on (the final alpha after the last step). Inversion walks the same pairs backwards.
    """

    timesteps: torch.Tensor    # (N,) int64, descending (float32 where they fall between training timesteps: Euler's)
    alphas: torch.Tensor       # (N,) float64
    alphas_prev: torch.Tensor  # (N,) float64
    alphas_cumprod: torch.Tensor  # (T,) float64, the training schedule (for forward noising)

    def __len__(self) -> int:
        return len(self.timesteps)

    def timestep(self, i: int) -> int | float:
        """``timesteps[i]`` as the UNet takes it: an int, or a float where the schedule's
        timesteps fall between the training ones (:func:`videdit.core.euler.euler_schedule`)."""
        t = self.timesteps[i]
        return float(t) if t.is_floating_point() else int(t)


def check_steps_offset(steps_offset: int | None) -> int | None:
    """``steps_offset`` (None: the model config's), or one line if it is negative."""
    if steps_offset is not None and steps_offset < 0:
        raise VideditError(f"steps_offset must be >= 0, got {steps_offset}")
    return steps_offset


def make_schedule(scheduler_config: dict, steps: int, steps_offset: int | None = None) -> Schedule:
    """The schedule of ``steps`` DDIM steps. ``steps_offset`` shifts every timestep (diffusers'
    config key): None takes the model config's (1 for Stable Diffusion 1.x); the reference
    implementations (prompt-to-prompt, PnP inversion, EDICT, ...) build their DDIM scheduler
    with the default 0."""
    if check_steps_offset(steps_offset) is not None:
        scheduler_config = {**scheduler_config, "steps_offset": int(steps_offset)}
    if steps < 1:
        raise VideditError(f"steps must be >= 1, got {steps}")
    train_steps = scheduler_config.get("num_train_timesteps", 1000)
    if steps > train_steps:
        raise VideditError(f"steps must be <= {train_steps} (the model's training timesteps), got {steps}")
    sched = DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(steps)
    acp = sched.alphas_cumprod.double()
    timesteps = sched.timesteps.long()
    prev = timesteps - train_steps // steps  # diffusers' DDIM prev_timestep rule
    alphas_prev = torch.where(prev >= 0, acp[prev.clamp(min=0)], sched.final_alpha_cumprod.double())
    return Schedule(timesteps=timesteps, alphas=acp[timesteps], alphas_prev=alphas_prev, alphas_cumprod=acp)
