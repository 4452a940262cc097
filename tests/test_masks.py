"""Mask resizing, growing and blurring on hand-made masks."""

import pytest
import torch

from videdit.errors import VideditError
from videdit.masks import dilate_mask, gaussian_blur, upsample_mask


def test_upsample_mask_area_averages_when_shrinking_and_stays_in_0_1():
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, 0, 0] = 1                                           # one 1 in the top-left 2x2 block
    m[0, 0, 2:, 2:] = 1                                         # a full bottom-right block
    down = upsample_mask(m, (2, 2))
    assert down.shape == (1, 1, 2, 2) and down.flatten().tolist() == [0.25, 0.0, 0.0, 1.0]
    up = upsample_mask(down, (8, 8))
    assert up.shape == (1, 1, 8, 8) and 0 <= float(up.min()) and float(up.max()) <= 1
    assert float(up[0, 0, -1, -1]) == 1 and float(up[0, 0, 0, -1]) == 0     # corners keep their block's value
    assert 0 < float(up[0, 0, 3, 3]) < 1                                      # soft at the seam


def test_upsample_mask_returns_the_same_tensor_at_its_own_size_and_checks_the_layout():
    m = torch.rand(2, 1, 5, 7)
    assert upsample_mask(m, (5, 7)) is m
    for bad in (torch.rand(5, 7), torch.rand(2, 3, 5, 7)):
        with pytest.raises(VideditError, match=r"a mask is \(F, 1, h, w\)"):
            upsample_mask(bad, (4, 4))


@pytest.mark.parametrize("radius", [1, 2])
def test_dilate_mask_grows_a_point_to_a_square(radius):
    m = torch.zeros(1, 1, 9, 9)
    m[0, 0, 4, 4] = 1
    grown = dilate_mask(m, radius)
    assert grown.shape == m.shape and float(grown.sum()) == (2 * radius + 1) ** 2
    assert float(grown[0, 0, 4 - radius:5 + radius, 4 - radius:5 + radius].min()) == 1
    assert dilate_mask(m, 0) is m


def test_gaussian_blur_conserves_a_constant_and_spreads_a_point():
    const = torch.full((2, 1, 6, 6), 0.7)
    torch.testing.assert_close(gaussian_blur(const, sigma=1.0, size=5), const)
    point = torch.zeros(1, 1, 7, 7, dtype=torch.float64)
    point[0, 0, 3, 3] = 1
    out = gaussian_blur(point, sigma=0.5, size=3)
    g = torch.exp(-torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64) / (2 * 0.25))
    kernel = torch.outer(g, g) / torch.outer(g, g).sum()
    torch.testing.assert_close(out[0, 0, 2:5, 2:5], kernel)                  # the normalised kernel itself
    assert float(out.sum()) == pytest.approx(1.0) and out.dtype == torch.float64


def test_upsample_mask_modes_match_the_reference_codes_resizes():
    """``nearest-exact`` is PIL's ``Image.NEAREST`` (blended latent diffusion's ``_read_mask``);
    ``bilinear`` is torchvision's tensor ``Resize`` without antialiasing (differential diffusion)."""
    import numpy as np
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8)
    mask = torch.from_numpy(image / 255.).float()[None, None]
    pil = np.array(Image.fromarray(image).resize((8, 6), Image.NEAREST)) / 255.
    assert torch.equal(upsample_mask(mask, (6, 8), "nearest-exact")[0, 0], torch.from_numpy(pil).float())
    bilinear = torch.nn.functional.interpolate(mask, size=(6, 8), mode="bilinear", align_corners=False, antialias=False)
    assert torch.equal(upsample_mask(mask, (6, 8), "bilinear"), bilinear)
    assert not torch.equal(upsample_mask(mask, (6, 8)), bilinear)            # videdit's own: area averaging
    with pytest.raises(VideditError, match="resize mode"):
        upsample_mask(mask, (6, 8), "bicubic")
