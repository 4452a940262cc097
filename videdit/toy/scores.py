"""Score images (generated, edited or rendered) against the toy world.

Object pixels are those far (in RGB) from a background estimate taken from
the image border; each connected blob is one object, whose colour is the
nearest palette colour of its core pixels and whose shape is read from its
fill ratio against its minimum enclosing circle (circle ~1, square 2/pi,
triangle 3*sqrt(3)/(4*pi)) or, where the object's pose is known (a toy clip's
ground truth), from the shape drawn in place that overlaps it best. All
functions take (H, W, 3) uint8 RGB images and return plain numbers, strings
or boolean masks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np

from videdit.errors import VideditError
from videdit.toy.world import (BACKGROUND_COLOURS, OBJECT_COLOURS, SHAPES, Clip, WorldObject, caption_for,
                               object_coverage, shape_area)

_OBJ_NAMES = tuple(OBJECT_COLOURS)
_OBJ_RGB = np.array([OBJECT_COLOURS[n] for n in _OBJ_NAMES], np.float32)  # (K, 3)
_BG_NAMES = tuple(BACKGROUND_COLOURS)
_BG_RGB = np.array([BACKGROUND_COLOURS[n] for n in _BG_NAMES], np.float32)

MIN_AREA = 12   # pixels: fewer are no object (detection), and a back object showing fewer is not scored
# Fill ratio (area / enclosing-circle area) of the ideal shapes, and the cut points between them.
_CIRCLE_SQUARE_CUT = (1.0 + 2.0 / math.pi) / 2.0
_SQUARE_TRIANGLE_CUT = (2.0 / math.pi + 3.0 * math.sqrt(3.0) / (4.0 * math.pi)) / 2.0


def _check_image(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3:
        raise VideditError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise VideditError(f"expected uint8 pixels, got {image.dtype}; convert with (x * 255).round().astype(np.uint8)")
    return image


def _nearest(rgb: np.ndarray, palette: np.ndarray) -> int:
    return int(np.argmin(((palette - rgb[None]) ** 2).sum(-1)))


def background_estimate(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 background: per left/right half, the median of that half's border pixels."""
    img = _check_image(image).astype(np.float32)
    h, w = img.shape[:2]
    out = np.empty_like(img)
    for lo, hi, side in ((0, w // 2, 0), (w // 2, w, w - 1)):
        border = np.concatenate([img[0, lo:hi], img[h - 1, lo:hi], img[:, side]])
        out[:, lo:hi] = np.median(border, axis=0)
    return out


def classify_background(image: np.ndarray) -> str:
    """Background label as in captions: ``"gray"`` or ``"white and black"`` (left and right)."""
    bg = background_estimate(image)
    w = bg.shape[1]
    left = _BG_NAMES[_nearest(bg[0, 0], _BG_RGB)]
    right = _BG_NAMES[_nearest(bg[0, w - 1], _BG_RGB)]
    return left if left == right else f"{left} and {right}"


def object_mask(image: np.ndarray, threshold: float = 40.0) -> np.ndarray:
    """(H, W) bool: pixels at least half-way from the background to the object's colour.

    A first pass takes pixels more than ``threshold`` from the background
    estimate; the colour of their core then sets, per blob, the half-coverage
    cut (alpha >= 0.5 along background -> object colour).
    """
    img = _check_image(image).astype(np.float32)
    bg = background_estimate(image)
    diff = img - bg
    rough = np.linalg.norm(diff, axis=-1) > threshold
    n, labels = cv2.connectedComponents(rough.astype(np.uint8), connectivity=8)
    mask = np.zeros_like(rough)
    for k in range(1, n):
        blob = labels == k
        core = cv2.erode(blob.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        if core.sum() < 3:
            core = blob
        colour = np.median(img[core], axis=0)  # (3,)
        offset = colour - bg  # (H, W, 3): per pixel, as the background differs between halves
        denom = (offset**2).sum(-1)
        grown = cv2.dilate(blob.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        alpha = (diff * offset).sum(-1) / np.maximum(denom, 1e-6)
        grown &= denom >= threshold**2
        mask |= grown & (alpha >= 0.5)
    return mask


@dataclass(frozen=True)
class DetectedObject:
    """One blob found in an image: its mask, colour name, shape name and pixel area."""

    mask: np.ndarray
    colour: str
    shape: str
    area: int


def classify_colour(image: np.ndarray, mask: np.ndarray) -> str:
    """Nearest object-palette colour to the median of the mask's core pixels."""
    img = _check_image(image)
    if mask.shape != img.shape[:2] or not mask.any():
        raise VideditError(f"mask must be a non-empty (H, W) array matching the image, got {mask.shape}")
    core = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    if core.sum() < 3:
        core = mask.astype(bool)
    return _OBJ_NAMES[_nearest(np.median(img[core].astype(np.float32), axis=0), _OBJ_RGB)]


def shape_fill_ratio(mask: np.ndarray) -> float:
    """Mask area over the area of its minimum enclosing circle (radius + 0.5 px for pixel centres)."""
    m = mask.astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        raise VideditError("empty mask: nothing to classify")
    pts = np.concatenate(contours).reshape(-1, 2).astype(np.float32)
    _, r = cv2.minEnclosingCircle(pts)
    return float(m.sum()) / (math.pi * (r + 0.5) ** 2)


def classify_shape(mask: np.ndarray) -> str:
    """``"circle"``, ``"square"`` or ``"triangle"`` from the enclosing-circle fill ratio."""
    ratio = shape_fill_ratio(mask)
    if ratio >= _CIRCLE_SQUARE_CUT:
        return "circle"
    if ratio >= _SQUARE_TRIANGLE_CUT:
        return "square"
    return "triangle"


def shape_fits(mask: np.ndarray, obj: WorldObject) -> dict[str, float]:
    """Per shape, the IoU of ``mask`` with that shape drawn in place: at the mask's centroid and
    ``obj``'s angle, scaled to the mask's area (half-covered pixels count)."""
    m = mask.astype(bool)
    if m.shape[0] != m.shape[1] or not m.any():
        raise VideditError(f"mask must be a non-empty square (H, W) array, got {m.shape} with {int(m.sum())} pixels")
    ys, xs = np.nonzero(m)
    centre = (float(xs.mean()) + 0.5, float(ys.mean()) + 0.5)   # pixel (x, y) covers [x, x + 1)
    fits = {}
    for shape in SHAPES:
        drawn = dataclasses.replace(obj, shape=shape, center=centre, scale=math.sqrt(m.sum() / shape_area(shape)))
        fits[shape] = mask_iou(m, object_coverage(drawn, m.shape[0]) >= 0.5)
    return fits


def classify_shape_in_place(mask: np.ndarray, obj: WorldObject) -> str:
    """The shape that, drawn where ``obj`` is (see :func:`shape_fits`), overlaps ``mask`` best.

    Where the object's pose is known (a toy clip's ground truth) this reads shapes through the
    toy VAE's round trip, which rounds corners: on rendered clips encoded and decoded, every
    shape read right, where the enclosing-circle fill ratio of :func:`classify_shape` reads some
    triangles as squares (tests/toy/test_scores.py).
    """
    fits = shape_fits(mask, obj)
    return max(fits, key=fits.get)


def detect_objects(image: np.ndarray, min_area: int = MIN_AREA) -> list[DetectedObject]:
    """Blobs of object pixels, largest first, each with colour and shape."""
    mask = object_mask(image)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    found = []
    for k in range(1, n):
        area = int(stats[k, cv2.CC_STAT_AREA])
        if area < min_area:
            continue
        blob = labels == k
        found.append(DetectedObject(blob, classify_colour(image, blob), classify_shape(blob), area))
    return sorted(found, key=lambda o: -o.area)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    if a.shape != b.shape:
        raise VideditError(f"masks differ in shape: {a.shape} vs {b.shape}")
    a, b = a.astype(bool), b.astype(bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR in dB between uint8 images over the pixels in ``where`` (all when None); inf if equal."""
    if a.shape != b.shape:
        raise VideditError(f"images differ in shape: {a.shape} vs {b.shape}")
    sel = np.ones(a.shape[:2], bool) if where is None else where.astype(bool)
    if not sel.any():
        raise VideditError("no pixels selected for PSNR")
    err = (a.astype(np.float64) - b.astype(np.float64))[sel]
    mse = float((err**2).mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def background_psnr(a: np.ndarray, b: np.ndarray, object_masks: np.ndarray, dilate: int = 1) -> float:
    """PSNR outside the object mask(s) ((H, W) or (N, H, W)), grown by ``dilate`` px to skip edges."""
    m = object_masks.astype(bool)
    if m.ndim == 3:
        m = m.any(axis=0)
    if dilate > 0:
        m = cv2.dilate(m.astype(np.uint8), np.ones((2 * dilate + 1,) * 2, np.uint8)).astype(bool)
    return psnr(a, b, ~m)


@dataclass(frozen=True)
class ImageScore:
    """How one image matches an intended single-object description."""

    colour_ok: bool
    shape_ok: bool
    background_ok: bool
    colour: str | None
    shape: str | None
    background: str


def score_image(image: np.ndarray, colour: str, shape: str, background: str) -> ImageScore:
    """Check the largest object's colour and shape and the background label against the intended ones."""
    objs = detect_objects(image)
    bg = classify_background(image)
    if not objs:
        return ImageScore(False, False, bg == background, None, None, bg)
    o = objs[0]
    return ImageScore(o.colour == colour, o.shape == shape, bg == background, o.colour, o.shape, bg)


def score_multi(image: np.ndarray, colours: tuple[str, ...], shapes: tuple[str, ...]) -> tuple[float, float]:
    """For several intended objects: the fraction whose colour is found, and the fraction whose
    (colour, shape) pair is found."""
    objs = detect_objects(image)
    found = {(o.colour, o.shape) for o in objs}
    found_colours = {o.colour for o in objs}
    n = len(colours)
    return (
        sum(c in found_colours for c in colours) / n,
        sum((c, s) in found for c, s in zip(colours, shapes)) / n,
    )


# ---- clips ----

def clip_flows(clip: Clip):
    """The clip's exact forward flow and occlusions as :class:`videdit.video.flow.Flows`, for
    ``videdit.metrics.temporal.warp_error`` (which reads the forward ones; backward are zero)."""
    from videdit.video.flow import Flows

    return Flows(forward=clip.flows, backward=np.zeros_like(clip.flows), occlusion=clip.occlusions,
                 occlusion_backward=np.zeros_like(clip.occlusions))


def recoloured(clip: Clip) -> tuple[str, str]:
    """The clip's caption with its front (last) object in the next palette colour that no object
    of the clip has (so that the edit cannot merge it into the back object), and that colour."""
    colours = list(OBJECT_COLOURS)
    front, taken = clip.objects[-1], {o.colour for o in clip.objects}
    i = colours.index(front.colour)
    colour = next(c for c in colours[i + 1:] + colours[:i] if c not in taken)
    new = dataclasses.replace(front, colour=colour)
    return caption_for((*clip.objects[:-1], new), clip.background), new.colour


def clip_frame_success(frame: np.ndarray, clip: Clip, t: int, colour: str) -> bool:
    """The front object's visible pixels (ground truth) have the asked colour; a one-object
    clip's largest detected object covers the true mask (IoU >= 0.5) and keeps the source's
    shape, read in place (:func:`classify_shape_in_place`); in a two-object clip the back
    object's visible pixels keep their colour."""
    if classify_colour(frame, clip.masks[t, -1]) != colour:
        return False
    if len(clip.objects) == 1:
        found = detect_objects(frame)
        return (bool(found) and mask_iou(found[0].mask, clip.masks[t, 0]) >= 0.5
                and classify_shape_in_place(found[0].mask, clip.objects_at(t)[0]) == clip.objects[0].shape)
    back = clip.masks[t, 0]
    return back.sum() < MIN_AREA or classify_colour(frame, back) == clip.objects[0].colour
