"""ProxEdit (videdit/inversion/proxedit.py): the reference's proximal operators, threshold and
correction mask (github.com/phymhan/prompt-to-prompt, ptp_utils.diffusion_step), and
thresholding an NPI edit."""

import dataclasses

import pytest
import torch

from tests.inversion.approximate_runs import rel_error, settings
from videdit.core.loop import StepContext
from videdit.inversion.proxedit import ProxEditConfig, ProximalGuidance, proximal, proximal_threshold
from videdit.inversion.record import Inversion
from videdit.pipeline import edit_latents, invert_frames, reconstruct


def test_proxedit_keeps_the_references_fraction_of_a_gaussian_difference():
    """ptp_utils.diffusion_step takes lambda as the quantile of |d| over the whole batch,
    [source, target], whose source half is 0: at q = 0.75 lambda is the target's median |d|
    and l0 keeps 50% of a Gaussian difference (at q = 0.7, the 0.4 quantile: 60%). An editor
    without a source branch gets the zero half added, so lambda is the same."""
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(1, 3, 4, 32, 32, generator=gen)               # (nb, F, C, h, w)
    batch = torch.cat([torch.zeros_like(target), target])              # source branch: d = 0
    for q, kept in ((0.75, 0.50), (0.7, 0.60)):
        config = ProxEditConfig(quantile=q)
        lam = proximal_threshold(batch, config)                       # (1, F, 1, 1, 1)
        torch.testing.assert_close(lam, proximal_threshold(target, config, zero_half=True))
        torch.testing.assert_close(lam.flatten(), target.abs().flatten(2)[0].quantile(2 * q - 1, dim=1),
                                   atol=2e-3, rtol=0)
        out = proximal(batch, lam, "l0")
        assert not out[0].any()
        fraction = (out[1] != 0).flatten(1).float().mean(1)           # per frame
        torch.testing.assert_close(fraction, torch.full((3,), kept), atol=1 / 4096, rtol=0)


def test_proxedit_operators_are_the_references():
    """l0: d -= d.clamp(-lambda, lambda), soft shrinkage; l1 then moves s > 0 down by lambda and,
    reading that result, s < 0 up by lambda (lambda = 1)."""
    d = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.0]).view(1, 1, 1, 1, 7)
    lam = torch.ones(1, 1, 1, 1, 1)
    assert proximal(d, lam, "l0").flatten().tolist() == [0.0, 0.5, 1.5, 0.0, -0.5, -1.5, 0.0]
    assert proximal(d, lam, "l1").flatten().tolist() == [0.0, 0.5, 0.5, 0.0, 0.5, -0.5, 0.0]
    with pytest.raises(Exception, match="l0"):
        ProxEditConfig(prox="hard")


def test_proxedit_corrects_where_the_difference_is_within_twice_lambda():
    """The reference's correction mask is |prox(d)| > lambda (for l0: |d| > 2 lambda), grown by
    dilate_mask pixels; the correction applies where it is 0. lambda = 1: of 2.5, 1.9 and -2.1,
    1.9 (kept by the shrinkage, as 0.9) is not in the mask; dilation by 1 grows the two cells to
    3x3 and (clipped at the corner) 2x2 blocks, one cell shared."""
    d = torch.zeros(1, 1, 1, 5, 5)                                      # (nb, F, C, h, w)
    d[..., 2, 2], d[..., 0, 0], d[..., 4, 4] = 2.5, 1.9, -2.1
    inv = Inversion(method="proxedit", trajectory=torch.zeros(3, 1, 1, 5, 5))
    ctx = StepContext(step=1, timestep=1, alpha=0.9, alpha_prev=0.95, n_steps=2)   # below recon_t
    for dilate, edited in ((0, 2), (1, 9 + 4 - 1)):
        guide = ProximalGuidance(ProxEditConfig(threshold=1.0, dilate=dilate), inv, "epsilon", zero_half=False)
        _, cond = guide.on_guidance(ctx, (0,), torch.zeros_like(d), d)
        assert float(cond[..., 0, 0]) == pytest.approx(0.9)
        assert int((guide.keep == 0).sum()) == edited
        assert guide.keep[0, 0, 0, 2, 2] == 0 and guide.keep[0, 0, 0, 4, 4] == 0 and guide.keep[0, 0, 0, 0, 0] == 1


def test_proxedit_thresholds_the_edit(tiny, wolf_frames):
    """A target prompt edits NPI's output; ProxEdit with a threshold above every difference
    drops the edit: without the corrections the source's reconstruction comes back, and with
    the reference's inversion guidance (recon_lr 1 below t = 400) it lands on the source
    latents themselves."""
    edit = settings("npi", target="a red fox")
    inv = invert_frames(tiny, wolf_frames, edit)
    source_recon = reconstruct(tiny, inv, edit)
    npi_edit = edit_latents(tiny, inv, edit)
    assert rel_error(npi_edit, source_recon) > 0.05
    prox_inv = dataclasses.replace(inv, method="proxedit")
    none = dataclasses.replace(edit, inversion="proxedit", inversion_params={"threshold": 1e6,
                                                                            "inversion_guidance": False})
    torch.testing.assert_close(edit_latents(tiny, prox_inv, none), source_recon, atol=1e-5, rtol=1e-5)
    some = dataclasses.replace(none, inversion_params={"inversion_guidance": False})   # q = 0.75
    partial = edit_latents(tiny, prox_inv, some)
    assert 0 < rel_error(partial, source_recon) < rel_error(npi_edit, source_recon)
    snap = dataclasses.replace(none, inversion_params={"threshold": 1e6})
    torch.testing.assert_close(edit_latents(tiny, prox_inv, snap), inv.source, atol=1e-5, rtol=1e-5)
