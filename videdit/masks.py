"""Mask tensors (F, 1, h, w) in [0, 1]: the one resize every mask goes through, growing and
blurring. Editors build masks from files, attention and noise (:mod:`videdit.editing.masks`);
frame stages composite with them (:mod:`videdit.video.keep_background`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from videdit.errors import VideditError

# the interpolations a reference code resizes its masks with (see upsample_mask)
RESIZE_MODES = ("nearest-exact", "bilinear")


def upsample_mask(mask: torch.Tensor, size: tuple[int, int], mode: str | None = None) -> torch.Tensor:
    """Resize a mask (F, 1, h, w) to ``size`` = (H, W): bilinear when enlarging (latents to
    frames), area-averaged when shrinking (a file to latents), so a binary mask gets soft
    edges rather than aliased ones. The one resize for masks in videdit.

    ``mode`` fixes the interpolation where a method's reference code resizes its mask its own
    way: ``"nearest-exact"`` (PIL's ``Image.NEAREST``, blended latent diffusion) or
    ``"bilinear"`` without antialiasing (torchvision's ``Resize`` of a tensor, differential
    diffusion), either way."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise VideditError(f"a mask is (F, 1, h, w), got {tuple(mask.shape)}")
    if mode not in (None, *RESIZE_MODES):
        raise VideditError(f"mask resize mode must be one of {RESIZE_MODES} (or None: videdit's), got {mode!r}")
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    m = mask.float()
    if mode is not None:
        m = F.interpolate(m, size=size, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
    elif size[0] * size[1] < m.shape[-2] * m.shape[-1]:
        m = F.interpolate(m, size=size, mode="area")
    else:
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    return m.clamp(0, 1)


def dilate_mask(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow a mask (F, 1, h, w) by ``radius`` latent pixels (a max filter)."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)


def gaussian_blur(maps: torch.Tensor, sigma: float = 0.5, size: int = 3) -> torch.Tensor:
    """Blur (B, 1, h, w) maps with a normalised Gaussian (reflect padding), to soften masks."""
    coords = torch.arange(size, dtype=torch.float32, device=maps.device) - (size - 1) / 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    kernel = (g[:, None] * g[None, :])
    kernel = (kernel / kernel.sum()).view(1, 1, size, size).to(maps.dtype)
    pad = size // 2
    return F.conv2d(F.pad(maps, (pad, pad, pad, pad), mode="reflect"), kernel)
