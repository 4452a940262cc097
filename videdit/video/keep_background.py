"""Keep the source's own pixels where the edit left the latents alone.

Every frame goes through the VAE, and the decoder does not give back the input exactly: even a
plain encode/decode moves pixels by a few levels (of 255) and, because that error differs from
frame to frame, a still background flickers. So after decoding, the frames are composited
(Blended Latent Diffusion, Avrahami et al. 2023, Sec. 3.2, names the loss and blends the source
back in pixel space; diffusers' ``VaeImageProcessor.apply_overlay`` does the same for
inpainting):

    out = m * edited + (1 - m) * source

where ``m`` is where the edit changed the latents: the norm over channels of
``edited - source`` latents, at or above ``threshold`` times its peak over the window's
frames, grown by ``dilate`` latent cells, then softened by a Gaussian of ``feather`` latent
cells and upsampled to frame size (:func:`~videdit.masks.upsample_mask`). It knows
nothing about the editor or the inversion; an edit that changes everything (random weights,
a restyle) keeps nothing of the source. A frame stage, last after decoding; ``--keep-background``
and ``edit_video(keep_background=...)`` add it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from videdit.errors import VideditError
from videdit.masks import dilate_mask, gaussian_blur, upsample_mask
from videdit.video.module import TemporalModule, Window, WindowLatents, register_temporal


@dataclass(frozen=True)
class KeepBackground:
    threshold: float = 0.3      # changed = latent change >= threshold * the window's peak change
    dilate: int = 1             # grow the changed region by this many latent cells
    feather: float = 0.75       # Gaussian sigma of the mask's edge, in latent cells (0: hard)

    def __post_init__(self):
        if not 0 < self.threshold < 1:
            raise VideditError(f"keep-background threshold must be in (0, 1), got {self.threshold}")
        if not isinstance(self.dilate, int) or self.dilate < 0:
            raise VideditError(f"keep-background dilate must be a whole number of latent cells >= 0, got {self.dilate}")
        if not 0 <= self.feather <= 4:
            raise VideditError(f"keep-background feather must be in [0, 4] latent cells, got {self.feather}")


def keep_background_options(value) -> dict | None:
    """What users pass for keep_background -> KeepBackground options: None/False = off,
    True = the defaults, a number = the threshold, a mapping = the options themselves."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    return {"threshold": float(value)}


def change_mask(source: torch.Tensor, edited: torch.Tensor, config: KeepBackground = KeepBackground()) -> torch.Tensor:
    """Binary (F, 1, h, w) mask of where ``edited`` latents (F, C, h, w) differ from ``source``."""
    if source.shape != edited.shape or source.ndim != 4:
        raise VideditError(f"latents to compare must both be (F, C, h, w), got {tuple(source.shape)} "
                           f"and {tuple(edited.shape)}")
    change = (edited.float() - source.float()).norm(dim=1, keepdim=True)   # (F, 1, h, w)
    peak = float(change.max())
    if peak == 0:
        return torch.zeros_like(change)
    return dilate_mask((change >= config.threshold * peak).float(), config.dilate)


def soft_mask(mask: torch.Tensor, size: tuple[int, int], feather: float) -> torch.Tensor:
    """A latent mask (F, 1, h, w) -> (F, 1, H, W) at ``size`` with a Gaussian edge."""
    if feather > 0:
        k = 2 * math.ceil(2 * feather) + 1
        mask = torch.maximum(mask, gaussian_blur(mask, sigma=feather, size=k))   # feather outwards only
    return upsample_mask(mask, size)


def composite(source: np.ndarray, edited: np.ndarray, mask: torch.Tensor, feather: float = 0.75) -> np.ndarray:
    """uint8 frames (F, H, W, 3): ``edited`` inside the latent ``mask`` (F, 1, h, w), ``source`` outside."""
    if source.shape != edited.shape:
        raise VideditError(f"source {source.shape} and edit {edited.shape} frames differ in shape")
    m = soft_mask(mask, source.shape[1:3], feather)[:, 0, :, :, None].cpu().numpy()    # (F, H, W, 1)
    out = m * edited.astype(np.float32) + (1 - m) * source.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def keep_background(source_frames: np.ndarray, edited_frames: np.ndarray, source_latents: torch.Tensor,
                    edited_latents: torch.Tensor, config: KeepBackground = KeepBackground()) -> np.ndarray:
    """The edit where its latents changed, the source frames elsewhere (see the module doc)."""
    mask = change_mask(source_latents, edited_latents, config)
    return composite(source_frames, edited_frames, mask, config.feather)


NAME = "keep_background"


@register_temporal
class KeepBackgroundStage(TemporalModule):
    """Put the source's own pixels back wherever the edit did not change the latents."""

    name = NAME
    config_class = KeepBackground
    order = 100                         # the last stage after decoding

    def bind(self, modules) -> None:
        makers = [m.name for m in modules if m.makes_frames]
        if makers:
            raise VideditError(f"keep_background does not combine with {', '.join(makers)}: it makes every frame from "
                               f"the source under the edit's colour maps, so nothing of the source is left to put "
                               f"back; drop keep_background")

    def finish_window(self, window: Window, frames: np.ndarray, latents: WindowLatents) -> np.ndarray:
        return keep_background(window.source(NAME), frames, latents.source, latents.result, self.config)
