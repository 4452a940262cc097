"""The approximate inversions, each against what it claims to improve on: null-text and
fixed-point inversion against DDIM's reconstruction, AIDI against plain fixed-point
iteration, NPI/ProxEdit's replay of the source prompt, pix2pix-zero's regularisers.
Numbers measured on tiny-random with the two wolf frames (64x64)."""

import dataclasses

import pytest
import torch

from videdit.core.loop import CallInfo
from videdit.core.schedule import make_schedule
from videdit.errors import VideditError
from videdit.config import make_config
from videdit.inversion import InversionInputs, ReplayContext, get_inversion
from videdit.inversion.aidi import anderson_solve
from videdit.inversion.fixed_point import fixed_point_solve, inverse_step_map, relative_residual
from videdit.inversion.pix2pix_zero import Pix2PixZeroConfig, kl_divergence, regularise
from videdit.inversion.proxedit import ProxEditConfig, proximal
from videdit.pipeline import EditSettings, edit_latents, invert_frames, reconstruct


def rel_error(a, b):
    return float((a - b).norm() / b.norm())


def settings(inversion="ddim", *, scale=7.5, steps=10, target="a wolf", **params):
    """Edit settings at guidance ``scale``; ``params`` are the inversion's options."""
    return EditSettings(source_prompt="a wolf", target_prompt=target, steps=steps, guidance=scale,
                        inversion=inversion, inversion_params=params)


def recon_error(model, frames, s):
    inv = invert_frames(model, frames, s)
    return rel_error(reconstruct(model, inv, s), inv.source), inv


# --- null-text inversion -----------------------------------------------------------------

def test_null_text_reconstructs_far_better_than_ddim_at_guidance(tiny, wolf_frames):
    """10 steps at guidance 7.5: DDIM 2.80; NTI with 10 Adam steps at lr 0.1 (tiny-random's
    embeddings need a larger rate than SD's 1e-2) measured 0.30, with 30 steps 0.03."""
    ddim, _ = recon_error(tiny, wolf_frames, settings())
    nti, inv = recon_error(tiny, wolf_frames, settings("null_text", inner_steps=10, lr=0.1))
    assert ddim > 2.5
    assert nti < 0.2 * ddim, (nti, ddim)
    null = inv.extras["null_embeds"]
    assert null.shape == (10, 2, *tiny.encode_text([""]).shape[1:])  # (N, F, L, D)
    assert (null[:, 0] - null[:, 1]).norm() > 1  # each frame fits its own embedding
    torch.testing.assert_close(inv.trajectory, invert_frames(tiny, wolf_frames, settings(scale=1)).trajectory)


def test_null_text_without_updates_is_ddim_and_counts_evals(tiny, wolf_frames):
    """inner_steps=0: the null embedding stays the negative prompt, so the replay is DDIM's
    at 7.5; it costs the pivot (10) plus a conditional and an unconditional forward per step."""
    s = settings("null_text", inner_steps=0)
    err, inv = recon_error(tiny, wolf_frames, s)
    ddim, _ = recon_error(tiny, wolf_frames, settings())
    assert err == pytest.approx(ddim, rel=1e-5)
    assert inv.unet_evals == 10 + 2 * 10


def test_null_text_frames_are_independent_of_batching(tiny, wolf_frames):
    """Frames fitted together (one batch) or apart (batch_size=1) reconstruct the same. (The
    embeddings themselves differ where the gradient is ~0: Adam's first step is lr * sign(g),
    so rounding noise flips those entries by 2 lr, without effect on the output.)"""
    s = settings("null_text", inner_steps=2, lr=0.1, early_stop=0.0)
    together = invert_frames(tiny, wolf_frames, s)
    apart = invert_frames(tiny, wolf_frames, dataclasses.replace(s, batch_size=1))
    torch.testing.assert_close(reconstruct(tiny, apart, s), reconstruct(tiny, together, s), atol=1e-3, rtol=1e-3)
    assert apart.unet_evals == together.unet_evals == 10 + 10 * (1 + 2 * 2 + 1)


# --- negative-prompt inversion and ProxEdit ---------------------------------------------

@pytest.mark.parametrize("method", ["npi", "proxedit"])
def test_source_prompt_replay_is_guidance_one_ddim(tiny, wolf_frames, method):
    """cond == uncond when target = source, so any guidance gives DDIM's guidance-1 result
    (up to rounding: the guided UNet batch is twice the size; measured 8e-6 at most)."""
    inv = invert_frames(tiny, wolf_frames, settings(method))
    ddim = invert_frames(tiny, wolf_frames, settings(scale=1))
    torch.testing.assert_close(inv.trajectory, ddim.trajectory, atol=0, rtol=0)
    expected = reconstruct(tiny, ddim, settings(scale=1))
    for scale in (3.0, 7.5):
        torch.testing.assert_close(reconstruct(tiny, inv, settings(method, scale=scale)), expected,
                                   atol=5e-5, rtol=1e-4)
    cond = tiny.encode_text(["a wolf"])
    ctx = ReplayContext(schedule=make_schedule(tiny.scheduler_config, 10), n_branches=1, source_branch=None,
                        output_branch=0, source_cond=cond, uncond=tiny.encode_text([""]),
                        prediction_type=tiny.prediction_type)
    assert get_inversion(method).replay(inv, ctx, make_config(get_inversion(method).config, {}, method)).uncond is cond


def test_proximal_operators():
    d = torch.randn(2, 3, 4, 8, 8)  # (nb, F, C, h, w)
    hard = proximal(d, ProxEditConfig(prox="hard", quantile=0.75))
    kept = (hard != 0).flatten(2).float().mean(-1)  # per (branch, frame)
    torch.testing.assert_close(kept, torch.full((2, 3), 0.25), atol=1 / 256, rtol=0)
    assert torch.equal(hard[hard != 0], d[hard != 0])
    soft = proximal(d, ProxEditConfig(prox="soft", threshold=0.5))
    torch.testing.assert_close(soft, d.sign() * (d.abs() - 0.5).clamp(min=0))


def test_proxedit_thresholds_the_edit(tiny, wolf_frames):
    """A target prompt edits NPI's output; ProxEdit with a threshold above every difference
    drops the edit (the source's reconstruction comes back), and with inversion guidance at
    full strength it lands on the source latents themselves."""
    edit = settings("npi", target="a red fox")
    inv = invert_frames(tiny, wolf_frames, edit)
    source_recon = reconstruct(tiny, inv, edit)
    npi_edit = edit_latents(tiny, inv, edit)
    assert rel_error(npi_edit, source_recon) > 0.05
    prox_inv = dataclasses.replace(inv, method="proxedit")
    none = dataclasses.replace(edit, inversion="proxedit", inversion_params={"threshold": 1e6})
    torch.testing.assert_close(edit_latents(tiny, prox_inv, none), source_recon, atol=1e-5, rtol=1e-5)
    some = dataclasses.replace(none, inversion_params={"quantile": 0.5})
    partial = edit_latents(tiny, prox_inv, some)
    assert 0 < rel_error(partial, source_recon) < rel_error(npi_edit, source_recon)
    snap = dataclasses.replace(none, inversion_params={"threshold": 1e6, "inversion_guidance": True, "recon_lr": 1.0,
                                                       "recon_t": 1000})
    torch.testing.assert_close(edit_latents(tiny, prox_inv, snap), inv.source, atol=1e-5, rtol=1e-5)


# --- fixed-point inversion and AIDI ------------------------------------------------------

def _step_map(tiny, wolf_frames, steps, step):
    """g of one inversion step, from the clean latents: z (1, F, C, h, w) -> z."""
    cond, uncond = tiny.encode_text(["a wolf", ""]).chunk(2)
    z = tiny.encode_images(wolf_frames)
    inp = InversionInputs(unet=tiny.unet, prediction_type=tiny.prediction_type, latents=z,
                          schedule=make_schedule(tiny.scheduler_config, steps), cond=cond, uncond=uncond)
    return inverse_step_map(inp, step, z[None], 1.0, CallInfo()), z[None]


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


def test_fixed_point_reconstructs_far_better_than_ddim(tiny, wolf_frames):
    """Guidance 1, 10 steps: DDIM 0.61, fixed point (5 iterations) 0.020, with ReNoise's
    averaging of the last 2 iterates 0.016; 1 iteration is DDIM."""
    ddim, ddim_inv = recon_error(tiny, wolf_frames, settings(scale=1))
    fp, _ = recon_error(tiny, wolf_frames, settings("fixed_point", scale=1))
    assert fp < 0.1 * ddim, (fp, ddim)
    one = invert_frames(tiny, wolf_frames, settings("fixed_point", scale=1, iterations=1))
    torch.testing.assert_close(one.trajectory, ddim_inv.trajectory, atol=1e-5, rtol=1e-5)
    assert one.unet_evals == ddim_inv.unet_evals == 10
    renoise, _ = recon_error(tiny, wolf_frames, settings("fixed_point", scale=1, average_last=2))
    assert renoise < 0.5 * ddim


@torch.no_grad()
def test_aidi_needs_fewer_iterations(tiny, wolf_frames):
    """The hardest step (2 steps: clean -> t=501): plain iteration needs 22 evaluations to a
    relative residual of 1e-3, Anderson (m=3) measured 15."""
    g, z_prev = _step_map(tiny, wolf_frames, 2, 0)
    _, plain = fixed_point_solve(g, z_prev, iterations=40, tol=1e-3)
    _, anderson = anderson_solve(g, z_prev, iterations=40, tol=1e-3, memory=3)
    assert anderson[-1] < 1e-3 and plain[-1] < 1e-3
    assert len(anderson) <= 0.8 * len(plain), (len(anderson), len(plain))


def test_anderson_accelerates_a_linear_contraction():
    """z = A z + b, A symmetric with spectral radius 0.9: to a residual of 1e-6 Picard
    iteration needs 103 evaluations, Anderson (m=5) 41."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(256, 256, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(-0.9, 0.9, 256, dtype=torch.float64)) @ q.T
    b = torch.randn(256, generator=gen, dtype=torch.float64)

    def g(z):  # (1, 1, 4, 8, 8)
        return (a @ z.flatten() + b).view_as(z)

    z0 = torch.zeros(1, 1, 4, 8, 8, dtype=torch.float64)
    _, plain = fixed_point_solve(g, z0, iterations=200, tol=1e-6)
    z, anderson = anderson_solve(g, z0, iterations=200, tol=1e-6, memory=5)
    assert len(anderson) < 0.5 * len(plain), (len(anderson), len(plain))
    exact = torch.linalg.solve(torch.eye(256, dtype=torch.float64) - a, b)
    assert rel_error(z.flatten(), exact) < 1e-5


# --- pix2pix-zero -------------------------------------------------------------------------

def _all_shifts_auto_corr(e):
    """The auto-correlation loss over every shift 1..4 (8x8 noise: one pyramid level)."""
    return sum((e * e.roll(d, dims=k)).mean((2, 3)).square().sum() for d in range(1, 5) for k in (2, 3))


def test_pix2pix_zero_regularisers_reduce_their_losses():
    gen = torch.Generator().manual_seed(0)
    out = 0.3 * torch.randn(2, 4, 8, 8) + 0.2 * torch.randn(2, 4, 1, 8)  # (F, C, h, w), rows correlated
    x = torch.randn(2, 4, 8, 8)
    ac = regularise(out, x, 0.5, "epsilon", Pix2PixZeroConfig(lambda_kl=0, reference_size=0), gen)
    assert _all_shifts_auto_corr(ac) < 0.98 * _all_shifts_auto_corr(out)
    kl = regularise(out, x, 0.5, "epsilon", Pix2PixZeroConfig(lambda_ac=0, reference_size=0), gen)
    assert kl_divergence(kl) < 0.05 * kl_divergence(out)
    # at tiny-random's 8x8 latents the calibrated steps are 64x smaller than diffusers' own
    kl_small = regularise(out, x, 0.5, "epsilon", Pix2PixZeroConfig(lambda_ac=0), gen)
    assert kl_divergence(kl) < kl_divergence(kl_small) < kl_divergence(out)


def test_pix2pix_zero_without_regularisation_is_ddim(tiny, wolf_frames):
    inv = invert_frames(tiny, wolf_frames, settings("pix2pix_zero", lambda_ac=0.0, lambda_kl=0.0))
    torch.testing.assert_close(inv.trajectory, invert_frames(tiny, wolf_frames, settings()).trajectory)
    regularised = invert_frames(tiny, wolf_frames, settings("pix2pix_zero"))
    assert rel_error(regularised.noise, inv.noise) > 0.01


# --- configs ------------------------------------------------------------------------------

@pytest.mark.parametrize("method, params, fix", [
    ("null_text", {"guidance": 0.5}, "[1, 50]"),
    ("null_text", {"inner_steps": -1}, "[0, 1000]"),
    ("null_text", {"lr": 0.0}, "(0, 1]"),
    ("null_text", {"early_stop": -1.0}, ">= 0"),
    ("proxedit", {"prox": "l2"}, "'hard', 'soft'"),
    ("proxedit", {"quantile": 1.0}, "[0, 1)"),
    ("proxedit", {"threshold": -1.0}, ">= 0"),
    ("proxedit", {"recon_lr": 2.0}, "[0, 1]"),
    ("proxedit", {"dilate": -1}, ">= 0"),
    ("fixed_point", {"iterations": 0}, "[1, 100]"),
    ("fixed_point", {"average_last": 6}, "[0, iterations=5]"),
    ("fixed_point", {"tol": -1.0}, ">= 0"),
    ("aidi", {"memory": 0}, "[1, 20]"),
    ("aidi", {"guidance": 60.0}, "[0, 50]"),
    ("pix2pix_zero", {"lambda_kl": -1.0}, ">= 0"),
    ("pix2pix_zero", {"num_auto_corr_rolls": 0}, "[1, 100]"),
    ("pix2pix_zero", {"reference_size": -8}, ">= 0"),
    ("npi", {"guidance": 2.0}, "takes no options"),
])
def test_config_validation(method, params, fix):
    with pytest.raises(VideditError, match=method) as e:
        settings(method, **params)
    assert fix in str(e.value)
