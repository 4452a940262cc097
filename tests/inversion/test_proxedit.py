"""ProxEdit (videdit/inversion/proxedit.py): the proximal operators, and thresholding an NPI edit."""

import dataclasses

import torch

from tests.inversion.approximate_runs import rel_error, settings
from videdit.inversion.proxedit import ProxEditConfig, proximal
from videdit.pipeline import edit_latents, invert_frames, reconstruct


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
