"""pix2pix-zero's inversion (videdit/inversion/pix2pix_zero.py): its regularisers reduce their
losses, and without them it is DDIM."""

import torch

from tests.inversion.approximate_runs import rel_error, settings
from videdit.inversion.pix2pix_zero import Pix2PixZeroConfig, kl_divergence, regularise
from videdit.pipeline import invert_frames


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
