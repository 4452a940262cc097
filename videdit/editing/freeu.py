"""FreeU (Si et al. 2024, "FreeU: Free Lunch in Diffusion U-Net", CVPR) as cross-image
attention's official code applies it (garibida/cross-image-attention,
``models/unet_2d_condition.py``, ``FreeUUNet2DConditionModel.forward``).

Before each decoder block, the backbone features entering it (the mid block's or the previous
up block's output, (B, C, h, w)) are changed when C is one of the UNet's two widest widths (SD
1.5's 1280 and 640): the first half of the channels is scaled by b1 (widest) or b2, then the
whole tensor's low frequencies, the 2t x 2t centre of its shifted 2-D spectrum (t = 1), are
scaled by s1 or s2. The official values for SD 1.5 are b1 = 1.2, b2 = 1.4, s1 = 0.9, s2 = 0.2.

This placement is the cross-image code's, not FreeU's own nor diffusers' ``enable_freeu``
(which filter the skip features inside each up block): the Fourier filter acts on the
backbone, once per block.
"""

from __future__ import annotations

from typing import Callable

import torch

THRESHOLD = 1   # the half-size of the scaled spectrum centre (the official ``threshold=1``)


def fourier_filter(x: torch.Tensor, scale: float, threshold: int = THRESHOLD) -> torch.Tensor:
    """``x`` (B, C, h, w) with the centre ``2 threshold`` x ``2 threshold`` of its shifted 2-D
    spectrum scaled by ``scale`` (the official ``Fourier_filter``); in float32, back in x's dtype."""
    f = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = x.shape[-2:]
    mask = torch.ones(h, w, device=x.device)
    mask[h // 2 - threshold:h // 2 + threshold, w // 2 - threshold:w // 2 + threshold] = scale
    f = torch.fft.ifftshift(f * mask, dim=(-2, -1))
    return torch.fft.ifftn(f, dim=(-2, -1)).real.to(x.dtype)


def freeu(x: torch.Tensor, widths: tuple[int, int], b: tuple[float, float], s: tuple[float, float]) -> torch.Tensor:
    """Backbone features ``x`` (B, C, h, w) entering an up block: with C = widths[k], the first
    C/2 channels times b[k], then :func:`fourier_filter` with s[k]; other widths pass as they are."""
    for width, bk, sk in zip(widths, b, s):
        if x.shape[1] == width:
            x = x.clone()
            x[:, :width // 2] *= bk
            return fourier_filter(x, sk)
    return x


def freeu_hooks(unet, b1: float, b2: float, s1: float, s2: float) -> dict[str, Callable]:
    """Forward hooks (for ``module_hooks``) on the modules whose output enters a decoder block:
    the mid block and every up block but the last. The widths are the UNet's two widest
    ``block_out_channels`` (1280 and 640 on SD 1.5)."""
    wide = sorted(set(unet.config.block_out_channels), reverse=True)
    widths = (wide[0], wide[1] if len(wide) > 1 else -1)

    def hook(module, args, output):
        return freeu(output, widths, (b1, b2), (s1, s2))

    names = ["mid_block"] if unet.mid_block is not None else []
    names += [f"up_blocks.{i}" for i in range(len(unet.up_blocks) - 1)]
    return {name: hook for name in names}
