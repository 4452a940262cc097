"""Euler ancestral steps in the loop's DDIM-style latents against diffusers' EulerAncestralDiscreteScheduler."""

import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler

from videdit.core.euler import EulerAncestral, euler_ancestral_step, euler_schedule, sigma_of, start_scale
from videdit.core.loop import StepContext
from videdit.core.schedule import make_schedule
from videdit.models.tiny import PIX2PIX_SCHEDULER_CONFIG, SD_SCHEDULER_CONFIG


def diffusers_scheduler(config, steps):
    sched = EulerAncestralDiscreteScheduler.from_config(config)
    sched.set_timesteps(steps)
    return sched


@pytest.mark.parametrize("steps", [5, 100])
def test_schedule_is_diffusers(steps):
    """linspace timesteps (float32, between the training ones) and their sigmas; the last step lands on sigma 0."""
    s, ref = euler_schedule(PIX2PIX_SCHEDULER_CONFIG, steps), diffusers_scheduler(PIX2PIX_SCHEDULER_CONFIG, steps)
    assert s.timesteps.dtype == torch.float32 and torch.equal(s.timesteps, ref.timesteps)
    sigmas = torch.tensor([sigma_of(a) for a in s.alphas.tolist() + [float(s.alphas_prev[-1])]], dtype=torch.float64)
    torch.testing.assert_close(sigmas, ref.sigmas.double(), rtol=1e-12, atol=0)
    assert torch.equal(s.alphas[1:], s.alphas_prev[:-1]) and float(s.alphas_prev[-1]) == 1.0
    assert s.timestep(1) == float(ref.timesteps[1]) and isinstance(s.timestep(1), float)
    assert isinstance(make_schedule(SD_SCHEDULER_CONFIG, steps).timestep(1), int)


def test_start_scale_is_diffusers_init_noise_sigma_in_the_loops_scale():
    """x_sigma / sqrt(sigma^2 + 1) of noise * init_noise_sigma: sigma_max for linspace, sqrt(sigma_max^2 + 1)
    for leading."""
    for config, spacing in ((PIX2PIX_SCHEDULER_CONFIG, "linspace"), ({**PIX2PIX_SCHEDULER_CONFIG,
                                                                     "timestep_spacing": "leading"}, "leading")):
        ref = diffusers_scheduler(config, 10)
        assert ref.config.timestep_spacing == spacing
        want = float(ref.init_noise_sigma) / (float(ref.sigmas[0]) ** 2 + 1) ** 0.5
        assert start_scale(config, euler_schedule(config, 10)) == pytest.approx(want, rel=1e-6)
    # a DDIM config (SD 1.x's): its Euler scheduler takes its leading spacing, and ignores clip_sample
    assert start_scale(SD_SCHEDULER_CONFIG, euler_schedule(SD_SCHEDULER_CONFIG, 10)) == 1.0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_step_is_diffusers_step(prediction_type):
    """Every step of a 5-step run, from diffusers' sigma-space sample, with the noise both draw from one seed."""
    config = {**PIX2PIX_SCHEDULER_CONFIG, "prediction_type": prediction_type}
    s, ref = euler_schedule(config, 5), diffusers_scheduler(config, 5)
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 8, 8, generator=gen) * ref.init_noise_sigma
    for i, t in enumerate(ref.timesteps):
        out = torch.randn(2, 4, 8, 8, generator=gen)
        alpha, alpha_next = float(s.alphas[i]), float(s.alphas_prev[i])
        x = ref.scale_model_input(sample, t)                                   # the loop's latents
        noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(i))
        ours = euler_ancestral_step(x, out, alpha, alpha_next, noise, prediction_type)
        sample = ref.step(out, t, sample, generator=torch.Generator().manual_seed(i)).prev_sample
        want = sample / (float(ref.sigmas[i + 1]) ** 2 + 1) ** 0.5            # diffusers' next sample, our scale
        torch.testing.assert_close(ours, want, rtol=0, atol=2e-6 * float(want.abs().max()))


def test_sampler_draws_one_noise_for_every_branch():
    """Three equal branches with equal outputs stay equal: the step's noise is the frames' (F, C, h, w)."""
    s = euler_schedule(PIX2PIX_SCHEDULER_CONFIG, 3)
    x = torch.randn(1, 2, 4, 8, 8).expand(3, -1, -1, -1, -1).clone()
    sampler = EulerAncestral(torch.Generator().manual_seed(0))
    ctx = StepContext(step=0, timestep=s.timestep(0), alpha=float(s.alphas[0]), alpha_prev=float(s.alphas_prev[0]),
                      n_steps=3)
    y = sampler.step(ctx, x, lambda z: torch.ones_like(z), "epsilon")
    assert torch.equal(y[0], y[1]) and torch.equal(y[1], y[2])
    assert float((y - x).abs().mean()) > 0.1   # it moved (sigma 14.6 -> 5.0 at 3 steps)
