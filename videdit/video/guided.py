"""Local colour transforms of an edit, for carrying it to other frames (guided filter).

The colour guided filter (He, Sun & Tang 2013, "Guided Image Filtering", Eqs. 19-21) fits, in
every window of radius ``r`` around each pixel, the affine map that best takes the guide's
colours (the *source* frame, I) to the filtered image's (the *edited* frame, p):

    p ~ A I + b,   A = (Sigma + eps U)^-1 cov(I, p),   b = mean(p) - A mean(I)     (3x3 A, 3-vector b)

and averages each pixel's coefficients over the windows that hold it. The output ``A I + b``
follows the guide's edges and carries the edit's colours. A frame between keyframes then
takes the keyframes' *coefficients* (smooth fields, 12 numbers a pixel) warped onto it along
the source flow and applies them to its *own* source pixels: its outlines are its own, not a
keyframe's moved by a flow that is least right at motion boundaries, and what moves along the
flow varies slowly, so a flow off by a pixel at an edge barely changes the result. This is
for appearance edits (colour, tone, material): an edit that changes shapes is a map no
affine function of the source's colours gives, and comes out as a recolouring of the source.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from videdit.errors import VideditError


@dataclass(frozen=True)
class ColourTransform:
    """Per-pixel affine colour maps: ``A`` (H, W, 3, 3) and ``b`` (H, W, 3), on colours in [0, 1]."""

    A: np.ndarray
    b: np.ndarray

    def stacked(self) -> np.ndarray:
        """(H, W, 12) float32: A's rows then b, for warping as one image."""
        h, w = self.b.shape[:2]
        return np.concatenate([self.A.reshape(h, w, 9), self.b], axis=-1).astype(np.float32)

    @classmethod
    def unstack(cls, x: np.ndarray) -> "ColourTransform":
        h, w = x.shape[:2]
        return cls(A=x[..., :9].reshape(h, w, 3, 3), b=x[..., 9:])


def auto_radius(size: tuple[int, int]) -> int:
    """The window radius for frames of ``size`` (H, W): 1/8 of the shorter side, at least 2.
    Larger windows fit maps closer to one colour map for the whole object, which a flow error
    moves less and which a keyframe's weak spot (an unedited corner) does not carry. 1/8 is
    steadier on the toy clips than smaller windows and about as steady as larger ones
    (docs/video.md), and a real edit that differs across an object wants some locality."""
    return max(2, round(min(size) / 8))


def _box(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over the (2r+1)^2 window at each pixel, windows cut at the border (float32)."""
    return cv2.blur(x, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)


def fit(guide: np.ndarray, image: np.ndarray, radius: int, eps: float) -> ColourTransform:
    """The colour guided filter's averaged coefficients taking uint8 ``guide`` (H, W, 3) to
    uint8 ``image`` (H, W, 3) (He et al. 2013, Eqs. 19-21); ``eps`` regularises towards
    a constant colour per window (on colours in [0, 1])."""
    if guide.shape != image.shape or guide.ndim != 3 or guide.shape[-1] != 3:
        raise VideditError(f"guided filter needs two (H, W, 3) images of one size, got {guide.shape} and {image.shape}")
    if radius < 1 or eps <= 0:
        raise VideditError(f"guided filter needs radius >= 1 and eps > 0, got {radius} and {eps}")
    I = guide.astype(np.float32) / 255                                       # (H, W, 3)
    p = image.astype(np.float32) / 255
    mean_I, mean_p = _box(I, radius), _box(p, radius)                        # (H, W, 3) each
    outer = lambda a, b: (a[..., :, None] * b[..., None, :]).reshape(*a.shape[:2], 9)   # noqa: E731 (H, W, 9)
    sigma = (_box(outer(I, I), radius) - outer(mean_I, mean_I)).reshape(*I.shape[:2], 3, 3)   # (H, W, 3, 3)
    cov = (_box(outer(p, I), radius) - outer(mean_p, mean_I)).reshape(*I.shape[:2], 3, 3)     # rows: p's channels
    sigma = sigma + eps * np.eye(3, dtype=np.float32)
    A = np.linalg.solve(sigma, cov.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)   # cov Sigma^-1, (H, W, 3, 3)
    b = mean_p - np.einsum("hwij,hwj->hwi", A, mean_I)                       # (H, W, 3)
    return ColourTransform(A=_box(A.reshape(*I.shape[:2], 9), radius).reshape(A.shape), b=_box(b, radius))


def apply(transform: ColourTransform, guide: np.ndarray) -> np.ndarray:
    """``A I + b`` at each pixel of uint8 ``guide`` (H, W, 3) -> uint8 (H, W, 3)."""
    I = guide.astype(np.float32) / 255
    out = np.einsum("hwij,hwj->hwi", transform.A, I) + transform.b
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)
