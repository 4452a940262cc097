"""Backward warping along optical flow, at image or latent resolution.

``warp(x, flow)[p] = x[p + flow[p]]`` (bilinear, coordinates past the border clamp to it):
with the forward flow of frames t -> t+1, ``warp(frame[t+1], forward[t])`` brings frame t+1
back onto frame t; with the backward flow t+1 -> t, ``warp(frame[t], backward[t])`` brings
frame t onto frame t+1. Pixel (i, j) sits at (j, i) and flow is in pixels of ``x``; flow
estimated on frames is brought to latent resolution with :func:`downsample_flow`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from videdit.errors import VideditError

Array = np.ndarray | torch.Tensor


def _as_tensor(a: Array, like: torch.Tensor | None = None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
    return t.to(device=like.device) if like is not None else t


def warp(x: Array, flow: Array, *, padding: str = "border") -> Array:
    """Backward-warp ``x`` by ``flow`` (F, H, W, 2) (or (H, W, 2) for one frame).

    ``x``: a numpy image stack (F, H, W, 3) or (H, W, 3), uint8 or float (returned in the same
    dtype, uint8 rounded), or a tensor (F, C, H, W) (returned in its dtype and device).
    ``padding``: "border" (clamp) or "zeros".
    """
    if padding not in ("border", "zeros"):
        raise VideditError(f"padding must be 'border' or 'zeros', got {padding!r}")
    numpy_in = isinstance(x, np.ndarray)
    single = x.ndim == 3
    if single:
        x, flow = x[None], flow[None]
    if x.ndim != 4 or flow.ndim != 4 or flow.shape[-1] != 2:
        raise VideditError(f"warp takes x (F, H, W, 3) or (F, C, H, W) and flow (F, H, W, 2); "
                           f"got {tuple(x.shape)} and {tuple(flow.shape)}")
    t = _as_tensor(x)
    t = t.permute(0, 3, 1, 2) if numpy_in else t                 # (F, C, H, W)
    dtype = t.dtype
    t = t.float()
    f = _as_tensor(flow, like=t).float()                          # (F, H, W, 2)
    if f.shape[:3] != (t.shape[0], *t.shape[2:]):
        raise VideditError(f"flow {tuple(f.shape)} does not match {t.shape[0]} frames of "
                           f"{t.shape[-1]}x{t.shape[-2]}; bring it to that size with downsample_flow")
    out = F.grid_sample(t, _grid(f), mode="bilinear", padding_mode=padding, align_corners=False)
    if numpy_in:
        out = out.permute(0, 2, 3, 1).cpu().numpy()              # (F, H, W, C)
        out = np.clip(np.round(out), 0, 255).astype(np.uint8) if dtype == torch.uint8 else out.astype(x.dtype)
    else:
        out = out.to(dtype)
    return out[0] if single else out


def _grid(flow: torch.Tensor) -> torch.Tensor:
    """Flow (F, H, W, 2) in pixels -> grid_sample's sampling grid in [-1, 1] (align_corners=False)."""
    h, w = flow.shape[1:3]
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    gx = (2 * (xs + flow[..., 0]) + 1) / w - 1                    # pixel centre j -> (2j + 1) / W - 1
    gy = (2 * (ys + flow[..., 1]) + 1) / h - 1
    return torch.stack([gx, gy], dim=-1)                          # (F, H, W, 2)


def downsample_flow(flow: Array, factor: int) -> Array:
    """Flow (..., H, W, 2) in pixels -> (..., H/factor, W/factor, 2) in pixels of the smaller
    grid: each block's mean vector, divided by ``factor`` (e.g. the VAE's 8)."""
    f = _block_mean(flow, factor, channels_last=True)
    return f / factor


def downsample_mask(mask: Array, factor: int, threshold: float | None = None) -> Array:
    """Mask (..., H, W) -> the fraction of each ``factor`` x ``factor`` block that is set, float
    in [0, 1]; with ``threshold``, bool (fraction >= threshold)."""
    frac = _block_mean(mask, factor, channels_last=False)
    return frac if threshold is None else frac >= threshold


def _block_mean(a: Array, factor: int, channels_last: bool) -> Array:
    if factor < 1:
        raise VideditError(f"factor must be >= 1, got {factor}")
    numpy_in = isinstance(a, np.ndarray)
    t = _as_tensor(a).float()
    h, w = t.shape[-3:-1] if channels_last else t.shape[-2:]
    if h % factor or w % factor:
        raise VideditError(f"size {w}x{h} is not a multiple of {factor}; resize the frames to a model size first")
    lead = t.shape[:-3] if channels_last else t.shape[:-2]
    if channels_last:
        t = t.reshape(*lead, h // factor, factor, w // factor, factor, t.shape[-1]).mean(dim=(-4, -2))
    else:
        t = t.reshape(*lead, h // factor, factor, w // factor, factor).mean(dim=(-3, -1))
    return t.numpy() if numpy_in else t


def latent_factor(frame_size: tuple[int, int], latent_size: tuple[int, int], what: str) -> int:
    """How many pixels of the frames (H, W) one latent cell (h, w) covers (the VAE's 8)."""
    (H, W), (h, w) = frame_size, latent_size
    factor = H // h
    if factor * h != H or factor * w != W:
        raise VideditError(f"{what}: frames {W}x{H} are not a whole multiple of the latents {w}x{h}")
    return factor
