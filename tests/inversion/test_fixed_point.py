"""Fixed-point inversion (videdit/inversion/fixed_point.py): ReNoise's recipe, step by step
against its official code's rules (github.com/garibida/ReNoise-Inversion,
src/renoise_inversion.py inversion_step, examples/inversion_example_sd.py), and plain
fixed-point iteration against DDIM's residual and reconstruction. Numbers measured on
tiny-random with the two wolf frames (64x64)."""

import pytest
import torch

from tests.inversion.approximate_runs import recon_error, settings, step_map as _step_map
from videdit.core.loop import CallInfo
from videdit.inversion import InversionInputs
from videdit.inversion.fixed_point import (FixedPointConfig, fixed_point_solve, inverse_step_map, relative_residual,
                                           renoise_regularise)
from videdit.pipeline import EditSettings, invert_frames

PLAIN = {"iterations": 5, "tol": 1e-5, "average": False, "reg_steps": 0}


@torch.no_grad()
def test_fixed_point_reduces_the_residual(tiny, wolf_frames):
    """Residual of DDIM's guess (1 evaluation) 6.5e-2; after 5 iterations 3.1e-4 (200x smaller)."""
    g, z_prev = _step_map(tiny, wolf_frames, 10, 0)
    ddim_guess = g(z_prev)
    before = relative_residual(g(ddim_guess), ddim_guess)
    z, residuals = fixed_point_solve(g, z_prev, iterations=5, tol=0)
    after = relative_residual(g(z), z)
    assert len(residuals) == 5 and residuals[1] == pytest.approx(before)
    assert after < before / 30, (before, after)


@torch.no_grad()
def test_fixed_point_steps_as_renoise_does(tiny, wolf_frames):
    """ReNoise's SD recipe (num_renoise_steps 1, ranges (0, 5) below t = 250 and (8, 10) above,
    guidance_scale 0) on 10 steps, timesteps 901 .. 1: the 7 steps at t >= 250 end at their second
    iterate g(g(z_prev)), unregularised; the 3 below at g of the regularised mean of eps(z_prev)
    and eps(g(z_prev)) (the KL term alone here: the auto-correlation draws random shifts). It
    inverts conditionally only: 7 * 2 + 3 * (2 + 1 at the clean latent) = 23 evaluations."""
    s = settings("fixed_point", scale=1, lambda_ac=0.0)
    inv = invert_frames(tiny, wolf_frames, s)
    assert inv.unet_evals == 23
    cond, uncond = tiny.encode_text(["a wolf", ""]).chunk(2)
    inp = InversionInputs(unet=tiny.unet, prediction_type=tiny.prediction_type, latents=inv.source,
                          schedule=s.schedule(tiny.scheduler_config), cond=cond, uncond=uncond)
    config = s.inversion_config
    for i, t in enumerate(inp.schedule.timesteps.tolist()):
        z_prev = inv.trajectory[i + 1][None]
        g = inverse_step_map(inp, i, z_prev, 1.0, CallInfo())
        if t >= 250:
            expected = g(g(z_prev))
        else:
            ref = g.noise(inv.source[None])

            def reg(eps):
                return renoise_regularise(eps, ref, config, torch.Generator())

            eps0 = g.noise(z_prev)
            eps1 = g.noise(g.land(reg(eps0)))
            expected = g.land(reg((eps0 + eps1) / 2))
        torch.testing.assert_close(inv.trajectory[i][None], expected, atol=1e-5, rtol=1e-5)


def test_fixed_point_takes_renoises_edit_settings():
    """The SD example inverts and reconstructs at 50 steps and guidance 1 (edit_cfg 1.0)."""
    s = EditSettings(inversion="fixed_point")
    assert (s.steps, s.guidance, s.inversion_config.guidance) == (50, 1.0, 1.0)
    assert EditSettings(inversion="fixed_point", guidance=7.5).inversion_config.guidance == 1.0
    assert EditSettings(inversion="fixed_point", guidance=7.5,
                        inversion_params={"guidance": None}).inversion_config.guidance == 7.5


def test_fixed_point_picks_the_last_iterate_or_the_best():
    """ReNoise ends a step at its last iterate; pick="best" (videdit's option) at the iterate of
    smallest residual, which matters where the iteration diverges: z <- 1 - 1.5 z from 0 goes
    1, -0.5, 1.75, -1.625 with relative residuals |g(z) - z| / |g(z)| of 1, 3, 1.29, 2.08, so
    the best is the first iterate."""

    def g(z):  # (1, 1, 1, 1, 1)
        return 1 - 1.5 * z

    z0 = torch.zeros(1, 1, 1, 1, 1)
    last, residuals = fixed_point_solve(g, z0, iterations=4)
    best, _ = fixed_point_solve(g, z0, iterations=4, best=True)
    assert float(last) == pytest.approx(-1.625) and float(best) == 1.0
    assert residuals == pytest.approx([1.0, 3.0, 2.25 / 1.75, 3.375 / 1.625])
    with pytest.raises(Exception, match="'last'"):
        FixedPointConfig(pick="smallest")


def test_fixed_point_reconstructs_far_better_than_ddim(tiny, wolf_frames):
    """Guidance 1, 10 steps: DDIM 0.61, ReNoise's recipe (2 iterations) 0.21, plain iteration
    (5 iterations) 0.020; 1 plain iteration is DDIM."""
    ddim, ddim_inv = recon_error(tiny, wolf_frames, settings(scale=1))
    renoise, _ = recon_error(tiny, wolf_frames, settings("fixed_point", scale=1))
    assert renoise < 0.5 * ddim, (renoise, ddim)
    fp, _ = recon_error(tiny, wolf_frames, settings("fixed_point", scale=1, **PLAIN))
    assert fp < 0.1 * ddim, (fp, ddim)
    one = invert_frames(tiny, wolf_frames, settings("fixed_point", scale=1, **{**PLAIN, "iterations": 1}))
    torch.testing.assert_close(one.trajectory, ddim_inv.trajectory, atol=1e-5, rtol=1e-5)
    assert one.unet_evals == ddim_inv.unet_evals == 10
