"""Rerender-A-Video's occlusion masks at latent resolution, against the official expressions
(``rerender.py``: ``blur = T.GaussianBlur(9, 18)``, ``blur(F.max_pool2d(occ, 9, 1, 4))``
added back and clamped, then ``max_pool2d(..., 8)`` to the latent grid): a latent cell with
any occluded pixel is left out of both fusions."""

import pytest
import torch
import torch.nn.functional as F

from videdit.video import rerender as rr


def official_blur(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``GaussianBlur((9, 9), (18, 18))`` on (B, 1, H, W), as its
    ``_get_gaussian_kernel1d`` and reflect padding compute it."""
    half = (9 - 1) * 0.5
    pdf = torch.exp(-0.5 * (torch.linspace(-half, half, 9) / 18.0) ** 2)
    k = pdf / pdf.sum()
    x = F.pad(x, (4, 4, 4, 4), mode="reflect")
    return F.conv2d(F.conv2d(x, k.view(1, 1, 1, 9)), k.view(1, 1, 9, 1))


def occlusions(seed: int, p: float = 0.004) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    occ = (torch.rand(1, 1, 64, 96, generator=g) < p).float()
    occ[..., 40:47, 10:30] = 1                                   # and one disoccluded band
    return occ


def test_latent_masks_are_the_official_ones():
    pre, first = occlusions(0), occlusions(1)
    # shape-aware fusion (firstx0): mask = 1 - max_pool2d(blend_mask_0, 8)
    blend_0 = (official_blur(F.max_pool2d(first, 9, 1, 4)) + first).clamp(0, 1)
    torch.testing.assert_close(rr.latent_keep(first, 8), 1 - F.max_pool2d(blend_0, 8), atol=1e-6, rtol=0)
    # pixel-aware fusion: what both anchors miss, then mask = 1 - max_pool2d(1 - blend_mask, 8)
    both = 1 - torch.clamp(1 - pre + 1 - first, 0, 1)
    blend = 1 - torch.clamp(official_blur(F.max_pool2d(both, 9, 1, 4)) + both, 0, 1)
    torch.testing.assert_close(rr.latent_keep(pre * first, 8), 1 - F.max_pool2d(1 - blend, 8), atol=1e-6, rtol=0)


def test_a_cell_with_any_occluded_pixel_is_left_out():
    occ = occlusions(2)
    keep = rr.latent_keep(occ, 8)[0, 0]                           # (8, 12)
    hit = F.max_pool2d(occ, 8)[0, 0] > 0                         # cells holding an occluded pixel
    assert int(hit.sum()) >= 5 and (keep[hit] == 0).all()
    reach = F.max_pool2d(F.max_pool2d(occ, 17, 1, 8), 8)[0, 0] > 0   # within 8 px (dilation 4 + blur 4)
    assert (keep[~reach] == 1).all() and int((~reach).sum()) >= 10
    assert ((keep[reach & ~hit] > 0) & (keep[reach & ~hit] < 1)).any()  # near ones weighted down


def test_soften_is_torchvision_gaussian_blur():
    """Where torchvision imports: the blur is its ``GaussianBlur(kernel_size=(9, 9), sigma=(18, 18))``."""
    try:
        import torchvision.transforms as T
    except Exception as e:  # noqa: BLE001 - absent, or a build for another torch
        pytest.skip(f"torchvision does not import here: {e}")
    occ = occlusions(3)
    official = (T.GaussianBlur(kernel_size=(9, 9), sigma=(18, 18))(F.max_pool2d(occ, 9, 1, 4)) + occ).clamp(0, 1)
    torch.testing.assert_close(rr.soften(occ), official, atol=1e-6, rtol=0)
