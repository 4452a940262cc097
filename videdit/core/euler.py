"""Euler ancestral sampling (Karras et al. 2022's Euler step with ancestral noise, eta 1: k-diffusion's
``sample_euler_ancestral``, diffusers' ``EulerAncestralDiscreteScheduler``), as pure functions in the
loop's DDIM-style latents.

The loop keeps ``x_t = sqrt(a) x0 + sqrt(1 - a) eps`` at alpha-bar ``a``; Euler samplers work in
sigma space, ``x_sigma = x0 + sigma eps`` with ``sigma = sqrt((1 - a) / a)``, so ``x_sigma =
x_t / sqrt(a)``, and the loop's ``x_t`` is what diffusers feeds the UNet
(``scale_model_input``: ``x_sigma / sqrt(sigma^2 + 1)``). A step converts to sigma space, moves
there and converts back at the next level.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from diffusers import EulerAncestralDiscreteScheduler

from videdit.core.ddim import predict_x0_eps
from videdit.core.loop import Sampler, StepContext
from videdit.core.schedule import Schedule, check_steps_offset
from videdit.errors import VideditError


def sigma_of(alpha: float) -> float:
    """Euler's noise level sigma = sqrt((1 - a) / a) of alpha-bar ``a`` (0 at a = 1)."""
    return ((1 - float(alpha)) / float(alpha)) ** 0.5


def euler_schedule(scheduler_config: dict, steps: int, steps_offset: int | None = None) -> Schedule:
    """The schedule of ``steps`` Euler steps on a model with ``scheduler_config``, as diffusers'
    ``EulerAncestralDiscreteScheduler.from_config(config)`` spaces them (its own default spacing,
    ``linspace``, where the config names none: timesteps ``linspace(999, 0, steps)``, which fall
    between the training timesteps, with sigma interpolated linearly between theirs). The
    timesteps stay float32, as the UNet sees them there; alpha-bar is ``1 / (1 + sigma^2)``, and
    the last step lands on sigma 0 (alpha-bar 1)."""
    if check_steps_offset(steps_offset) is not None:
        scheduler_config = {**scheduler_config, "steps_offset": int(steps_offset)}
    train_steps = scheduler_config.get("num_train_timesteps", 1000)
    if not 1 <= steps <= train_steps:
        raise VideditError(f"steps must be in [1, {train_steps}] (the model's training timesteps), got {steps}")
    sched = _scheduler(scheduler_config)
    sched.set_timesteps(steps)
    alphas = 1 / (1 + sched.sigmas.double() ** 2)              # (N + 1,): the last is sigma 0's, 1
    return Schedule(timesteps=sched.timesteps.float(), alphas=alphas[:-1], alphas_prev=alphas[1:],
                    alphas_cumprod=sched.alphas_cumprod.double())


def start_scale(scheduler_config: dict, schedule: Schedule) -> float:
    """What a standard Gaussian draw is multiplied by to start Euler sampling from pure noise, in
    the loop's scale: diffusers starts at ``noise * init_noise_sigma`` in sigma space, sigma_max
    for ``linspace``/``trailing`` spacing and ``sqrt(sigma_max^2 + 1)`` for ``leading``, which is
    ``sqrt(1 - a_0)`` or 1 times the noise here."""
    if _scheduler(scheduler_config).config.timestep_spacing == "leading":
        return 1.0
    return (1 - float(schedule.alphas[0])) ** 0.5


def _scheduler(scheduler_config: dict) -> EulerAncestralDiscreteScheduler:
    """diffusers' Euler ancestral scheduler from a model's scheduler config (any scheduler's: the
    keys it does not take, a DDIM config's ``clip_sample`` say, are left out)."""
    keys = inspect.signature(EulerAncestralDiscreteScheduler.__init__).parameters
    return EulerAncestralDiscreteScheduler.from_config({k: v for k, v in scheduler_config.items() if k in keys})


def euler_ancestral_step(x: torch.Tensor, model_output: torch.Tensor, alpha: float, alpha_next: float,
                         noise: torch.Tensor, prediction_type: str = "epsilon") -> torch.Tensor:
    """Euler ancestral move (eta 1) of DDIM-style latents ``x`` from alpha-bar ``alpha`` to
    ``alpha_next``: in sigma space, a deterministic Euler step to sigma_down and fresh ``noise``
    (broadcast to ``x``) at sigma_up, where sigma_up^2 = s'^2 (s^2 - s'^2) / s^2 and sigma_down^2 =
    s'^2 - sigma_up^2 (s, s' the sigmas of ``alpha``, ``alpha_next``)."""
    sigma, sigma_next = sigma_of(alpha), sigma_of(alpha_next)
    up = (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5
    down = (sigma_next ** 2 - up ** 2) ** 0.5
    x0, _ = predict_x0_eps(x, model_output, alpha, prediction_type)
    xs = x / float(alpha) ** 0.5                                # sigma space: x0 + sigma eps
    derivative = (xs - x0) / sigma
    xs = xs + derivative * (down - sigma) + noise * up
    return xs * float(alpha_next) ** 0.5


class EulerAncestral(Sampler):
    """Euler ancestral sampling on an Euler schedule (:func:`euler_schedule`): each step draws
    one N(0, I) noise of the frames (F, C, h, w) from ``generator``, every branch's, so branches
    that start alike and get the same model output stay alike."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def step(self, ctx: StepContext, state: torch.Tensor, predict: Callable[[torch.Tensor], torch.Tensor],
             prediction_type: str) -> torch.Tensor:
        out = predict(state)
        noise = torch.randn(state.shape[1:], generator=self.generator, dtype=torch.float32).to(state)   # (F, C, h, w)
        return euler_ancestral_step(state, out, ctx.alpha, ctx.alpha_prev, noise, prediction_type)
