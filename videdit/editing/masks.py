"""Masks: where an editor may change the frames.

One type everywhere: a mask is a float tensor in [0, 1] at latent resolution, shape
(F, 1, h, w), 1 = edit, 0 = keep; F may be 1 (one mask for every frame, broadcast).
Binary masks are the special case of values in {0, 1}; soft masks (change maps) are not.

Constructors: :func:`mask_from_file` (an image or ``.npy`` map of any size with the
frames' aspect ratio), :func:`mask_from_tensor` (programmatic), :func:`mask_from_attention`
(cross-attention maps, :class:`~videdit.attention.CrossAttentionStore`) and
:func:`mask_from_noise_difference` (DiffEdit's automatic mask). :func:`upsample_mask` is the
one resize every mask goes through (to latent size on the way in, to frame size on the way
out, e.g. for compositing or metrics).
"""

from __future__ import annotations

import os
from pathlib import Path
import cv2
import numpy as np
import torch

from videdit.core.ddim import predict_x0_eps
from videdit.core.loop import CallInfo, predict_noise
from videdit.core.schedule import Schedule
from videdit.errors import VideditError
from videdit.masks import dilate_mask, gaussian_blur, upsample_mask  # noqa: F401  (editors import them here)

ASPECT_TOLERANCE = 0.01   # relative difference of aspect ratios a mask may have from the frames'
MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".npy")

# What editor configs accept as a mask: a file path, or a tensor/array given programmatically.
MaskSource = str | os.PathLike | torch.Tensor | np.ndarray


def _check_aspect(what: str, mask_hw: tuple[int, int], frame_size: tuple[int, int]) -> None:
    mh, mw = mask_hw
    fh, fw = frame_size
    r_mask, r_frame = mw / mh, fw / fh
    if abs(r_mask / r_frame - 1) > ASPECT_TOLERANCE:
        raise VideditError(
            f"{what} is {mw}x{mh} (aspect ratio {r_mask:.3f}) but the frames being edited are {fw}x{fh} "
            f"(aspect ratio {r_frame:.3f}); crop or pad the mask to the frames' aspect ratio (any size with "
            f"that ratio is resized), or pass --size so the frames match the mask")


def _as_nchw(value: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    """(h, w), (F, h, w) or (F, 1, h, w) values in [0, 1] -> float (F, 1, h, w)."""
    t = torch.as_tensor(value)
    if t.dtype == torch.bool:
        t = t.float()
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or t.shape[1] != 1:
        raise VideditError(f"{what} must be (h, w), (F, h, w) or (F, 1, h, w), got {tuple(t.shape)}")
    t = t.float()
    if not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1:
        raise VideditError(f"{what} must hold values in [0, 1] (1 = edit, 0 = keep), "
                           f"got [{float(t.min()):.3g}, {float(t.max()):.3g}]")
    return t


def mask_from_tensor(value: torch.Tensor | np.ndarray, latent_size: tuple[int, int], *,
                     frame_size: tuple[int, int], n_frames: int | None = None,
                     resize: str | None = None) -> torch.Tensor:
    """A programmatic mask ((h, w), (F, h, w) or (F, 1, h, w), values in [0, 1], any size
    with the frames' aspect ratio) -> (F or 1, 1, h, w) at ``latent_size`` = (h, w).
    ``frame_size`` = (H, W) of the frames being edited; ``n_frames`` checks a per-frame mask;
    ``resize``: :func:`upsample_mask`'s mode."""
    t = _as_nchw(value, "the mask")
    _check_aspect("the mask", tuple(t.shape[-2:]), frame_size)
    if n_frames is not None and t.shape[0] not in (1, n_frames):
        raise VideditError(f"the mask has {t.shape[0]} frames but {n_frames} frames are edited; "
                           f"give one mask for all frames or one per frame")
    return upsample_mask(t, latent_size, resize)


def mask_from_file(path: str | os.PathLike, latent_size: tuple[int, int], *,
                   frame_size: tuple[int, int], resize: str | None = None) -> torch.Tensor:
    """An image (white = edit, black = keep; grey = partial, for soft masks) or a ``.npy``
    array of values in [0, 1] -> (1, 1, h, w) at ``latent_size`` = (h, w), one mask for every
    frame. The file may have any size; if its aspect ratio differs from the frames'
    (``frame_size`` = (H, W)) by more than 1%, this raises rather than stretch it.
    ``resize``: :func:`upsample_mask`'s mode."""
    path = Path(path)
    check_mask_path(path)
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise VideditError(f"cannot read mask {path}: {e}".splitlines()[0]) from e
        t = _as_nchw(np.asarray(array, dtype=np.float32), f"mask {path}")
    else:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
        if image is None:
            raise VideditError(f"cannot read mask {path}; give a PNG/JPEG image or a .npy array")
        scale = float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 1.0
        t = _as_nchw(image.astype(np.float32) / scale, f"mask {path}")
    _check_aspect(f"mask {path}", tuple(t.shape[-2:]), frame_size)
    return upsample_mask(t, latent_size, resize)


def check_mask_path(path: str | os.PathLike) -> None:
    """Fail early (at config time) on a mask path that cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise VideditError(f"mask file {path} does not exist; give an image (white = edit) or a .npy array")
    if path.suffix.lower() not in MASK_SUFFIXES:
        raise VideditError(f"mask {path}: unknown type {path.suffix!r}; use one of {', '.join(MASK_SUFFIXES)}")


def validate_mask_source(value, what: str) -> None:
    """For config ``__post_init__``: a path that exists, or a tensor/array; never anything else."""
    if value is None or isinstance(value, (torch.Tensor, np.ndarray)):
        return
    if isinstance(value, (str, os.PathLike)):
        check_mask_path(value)
        return
    raise VideditError(f"{what} must be a file path or a tensor, got {type(value).__name__}")


def load_mask(value: MaskSource | None, latent_size: tuple[int, int], *, frame_size: tuple[int, int],
              n_frames: int | None = None, resize: str | None = None) -> torch.Tensor | None:
    """An editor's ``mask`` option (path, tensor, array or None) -> (F or 1, 1, h, w) or None,
    resized to ``latent_size`` with :func:`upsample_mask`'s ``resize`` mode."""
    if value is None:
        return None
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return mask_from_tensor(value, latent_size, frame_size=frame_size, n_frames=n_frames, resize=resize)
    return mask_from_file(value, latent_size, frame_size=frame_size, resize=resize)


def mask_from_attention(maps: torch.Tensor, threshold: float | None = 0.5, *, dilate: int = 0) -> torch.Tensor:
    """Cross-attention maps of the chosen tokens, (F, k, h, w) or (nb, F, k, h, w) as
    :meth:`CrossAttentionStore.maps` gives them (the last branch is used), -> (F, 1, h, w):
    summed over the tokens, max-normalised per frame, then binarised at ``threshold``
    (None: the soft normalised map) and grown by ``dilate`` latent pixels."""
    if maps.ndim == 5:
        maps = maps[-1]
    if maps.ndim != 4:
        raise VideditError(f"attention maps must be (F, k, h, w) or (nb, F, k, h, w), got {tuple(maps.shape)}")
    if threshold is not None and not 0 <= threshold <= 1:
        raise VideditError(f"attention mask threshold must be in [0, 1], got {threshold}")
    m = maps.float().sum(1, keepdim=True)                                   # (F, 1, h, w)
    peak = m.flatten(1).amax(1).view(-1, 1, 1, 1)
    m = torch.where(peak > 0, m / peak.clamp(min=torch.finfo(m.dtype).tiny), torch.zeros_like(m))
    if threshold is not None:
        m = (m >= threshold).float()
    return dilate_mask(m, dilate)


def encode_step(n_steps: int, encode_ratio: float) -> int:
    """The schedule index at noise level ``encode_ratio`` (0: clean, 1: the first step), as
    diffusers' ``get_timesteps(n_steps, strength=encode_ratio)`` picks it (n - int(n * ratio)),
    at most the last step."""
    return min(n_steps - 1, max(0, n_steps - int(encode_ratio * n_steps)))


@torch.no_grad()
def mask_from_noise_difference(unet, latents: torch.Tensor, source_cond: torch.Tensor, target_cond: torch.Tensor,
                               uncond: torch.Tensor, schedule: Schedule, *, prediction_type: str = "epsilon",
                               encode_ratio: float = 0.5, n_samples: int = 10, guidance: float = 7.5,
                               clamp_ratio: float = 3.0, threshold: float | None = 0.5, seed: int = 0,
                               batch_size: int = 8) -> torch.Tensor:
    """DiffEdit's mask (Couairon et al. 2023, Sec. 3.2, step 1): noise the clean latents
    (F, C, h, w) to the level ``encode_ratio`` of the way through the schedule with
    ``n_samples`` draws, predict the noise under the source and the target prompt (CFG at
    ``guidance``), and average |eps_target - eps_source| over draws and channels. As in
    diffusers' ``StableDiffusionDiffEditPipeline.generate_mask``, the map is clipped at
    ``clamp_ratio`` times its mean (per frame here), scaled to [0, 1] and binarised at
    ``threshold`` (None: the soft map). -> (F, 1, h, w).

    Where the two predictions agree everywhere (identical prompts) the mask is 0, not the
    0/0 a relative threshold would give. Costs 2 * ``n_samples`` guided UNet evaluations per
    frame, the draws batched together (``batch_size // n_samples`` frames per UNet call).
    Attention modules do not record these calls (they are marked ``inverting``)."""
    step = encode_step(len(schedule), encode_ratio)
    t, alpha = int(schedule.timesteps[step]), float(schedule.alphas[step])
    z0 = latents.float()                                                     # (F, C, h, w)
    n_frames = z0.shape[0]
    if torch.equal(source_cond, target_cond):
        return z0.new_zeros(n_frames, 1, *z0.shape[-2:])  # identical prompts: nothing differs
    gen = torch.Generator().manual_seed(seed)  # CPU generator: the same draws on every device
    noise = torch.randn((n_samples, *z0.shape), generator=gen).to(z0)       # (n, F, C, h, w)
    x = alpha ** 0.5 * z0 + (1 - alpha) ** 0.5 * noise
    xb = torch.cat([x, x])                                                   # (2n, F, C, h, w): source, target
    cond = torch.cat([source_cond.expand(n_samples, *source_cond.shape[1:]),
                      target_cond.expand(n_samples, *target_cond.shape[1:])])  # (2n, L, D)
    neg = uncond.expand(2 * n_samples, *uncond.shape[1:])
    # All draws go through the UNet together (as diffusers batches them), fewer frames per call.
    out = predict_noise(unet, xb, t, cond, neg, (guidance,) * (2 * n_samples),
                        batch_size=max(1, batch_size // n_samples), info=CallInfo(inverting=True))
    src, tgt = predict_x0_eps(xb, out, alpha, prediction_type)[1].chunk(2)  # each (n, F, C, h, w)
    diff = (tgt - src).abs().mean((0, 2))[:, None]                           # (F, 1, h, w)
    scale = src.abs().mean((0, 2, 3, 4))                                     # (F,)
    # Differences far below the predictions' own magnitude are float noise, not an edit.
    agree = diff.flatten(1).mean(1) <= 1e-5 * scale                          # (F,)
    clip = (diff.flatten(1).mean(1) * clamp_ratio).clamp(min=torch.finfo(diff.dtype).tiny).view(-1, 1, 1, 1)
    m = diff.clamp(max=clip) / clip                                          # (F, 1, h, w) in [0, 1]
    if threshold is not None:
        m = (m > threshold).float()
    return torch.where(agree.view(-1, 1, 1, 1), torch.zeros_like(m), m)


def frames_shape(latents: torch.Tensor, vae_scale_factor: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(latent (h, w), frame (H, W)) of latents (..., C, h, w)."""
    h, w = latents.shape[-2:]
    return (h, w), (h * vae_scale_factor, w * vae_scale_factor)



__all__ = ["MaskSource", "dilate_mask", "encode_step", "frames_shape", "gaussian_blur", "load_mask",
           "mask_from_attention", "mask_from_file", "mask_from_noise_difference", "mask_from_tensor",
           "upsample_mask", "validate_mask_source"]
