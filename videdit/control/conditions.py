"""ControlNet condition images, one per frame, at the frames' working size.

Two kinds:

- **computed** from the source frames, where no weights are needed: ``canny`` (OpenCV's Canny
  at thresholds 100 and 200, as diffusers' ControlNet docs and ControlNet's own annotator
  ``annotator/canny`` use them) and ``softedge`` (a Gaussian-blurred Sobel gradient magnitude,
  normalised per frame: OpenCV's image-gradient recipe; the soft-edge ControlNets were trained on
  HED or PiDiNet maps, which need those networks' weights, so this is a weights-free stand-in
  that gives soft, bright-on-black edges of the same kind);
- **given** as a file: ``depth=PATH``, ``pose=PATH`` or ``image=PATH``, where PATH is a video,
  a frame folder (read with videdit's own readers, with the clip's frame selection) or one
  image (every frame's), resized to the working size.

Every condition gives uint8 RGB frames (F, H, W, 3); :mod:`videdit.control.controlnet` turns
them into the ControlNet's [0, 1] input, as diffusers' control image processor does
(``do_normalize=False``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from videdit import io
from videdit.errors import VideditError

CANNY_THRESHOLDS = (100, 200)      # low, high: diffusers' ControlNet docs and annotator/canny's defaults
SOFTEDGE_SIGMA = 1.5               # Gaussian blur before the gradient (pixels at the working size)
COMPUTED = ("canny", "softedge")   # conditions made from the source frames
GIVEN = ("depth", "pose", "image")  # conditions read from a file: KIND=PATH


def canny(frames: np.ndarray, low: int = CANNY_THRESHOLDS[0], high: int = CANNY_THRESHOLDS[1]) -> np.ndarray:
    """Canny edges (Canny 1986, OpenCV's ``cv2.Canny`` on the grey frame) of uint8 RGB frames
    (F, H, W, 3) -> (F, H, W, 3) uint8, 255 on edges and 0 elsewhere, in all three channels
    (the canny ControlNets' input)."""
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        edges = cv2.Canny(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), low, high)   # (H, W)
        out[i] = edges[..., None]
    return out


def soft_edges(frames: np.ndarray, sigma: float = SOFTEDGE_SIGMA) -> np.ndarray:
    """Soft edges of uint8 RGB frames (F, H, W, 3) -> (F, H, W, 3) uint8: the Sobel gradient
    magnitude of the Gaussian-blurred grey frame, divided by the frame's largest (so its
    strongest edge is 255), in all three channels. A weights-free stand-in for the HED/PiDiNet
    maps the soft-edge ControlNets were trained on (those need the detectors' weights)."""
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        grey = cv2.GaussianBlur(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), sigma)
        dx, dy = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
        magnitude = cv2.magnitude(dx, dy)                                                  # (H, W)
        peak = float(magnitude.max())
        edges = magnitude * (255.0 / peak) if peak > 0 else magnitude
        out[i] = np.clip(np.round(edges), 0, 255).astype(np.uint8)[..., None]
    return out


def resize_to(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, size[1], size[0], 3): area when shrinking, linear when growing."""
    if frames.shape[1:3] == (size[1], size[0]):
        return frames
    shrink = size[0] * size[1] < frames.shape[1] * frames.shape[2]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, size, interpolation=interp) for f in frames])


@dataclass(frozen=True)
class Condition:
    """One ``--control`` value: ``kind`` (canny, softedge, depth, pose, image) and, for a given
    condition, the file it is read from; canny's ``thresholds`` (low, high; None: 100 and 200).
    :meth:`parse` reads "canny", "canny=50,100" or "depth=PATH"."""

    kind: str
    path: Path | None = None
    thresholds: tuple[int, int] | None = None

    @classmethod
    def parse(cls, text: str | Condition) -> Condition:
        if isinstance(text, Condition):
            return text
        kind, sep, path = str(text).partition("=")
        kind = kind.strip().lower()
        if kind in COMPUTED and not sep:
            return cls(kind)
        if kind == "canny" and sep:
            low, comma, high = path.partition(",")
            if comma and low.strip().isdigit() and high.strip().isdigit() and int(low) <= int(high):
                return cls(kind, thresholds=(int(low), int(high)))
        if kind in GIVEN and sep and path.strip():
            return cls(kind, Path(path.strip()).expanduser())
        raise VideditError(f"--control {text!r}: give one of {', '.join(COMPUTED)} (computed from the frames) or "
                           f"{'|'.join(GIVEN)}=PATH (a video, a frame folder or one image)")

    def __str__(self) -> str:
        if self.thresholds is not None:
            return f"{self.kind}={self.thresholds[0]},{self.thresholds[1]}"
        return self.kind if self.path is None else f"{self.kind}={self.path}"

    @property
    def given(self) -> bool:
        return self.path is not None

    def check_file(self, n_frames: int, read: io.ReadOptions) -> int | None:
        """Probe a given condition against a clip of ``n_frames`` read with ``read``: its frame
        count under the same selection (None: one image, every frame's), or one line saying
        what does not fit. Computed conditions pass."""
        if not self.given:
            return None
        if not self.path.exists():
            raise VideditError(f"--control {self}: no file or folder at {self.path}")
        if io.is_image(self.path):
            return None
        got = io.probe(self.path, _selection(read)).n_frames
        if got != n_frames:
            raise VideditError(f"--control {self} has {got} frames where the clip has {n_frames} (with the same "
                               f"frame selection); give one map per source frame, or one image for every frame")
        return got


def _selection(read: io.ReadOptions) -> io.ReadOptions:
    """The clip's frame selection without its resizing: a condition is resized to the frames."""
    return dataclasses.replace(read, size=None)


class ConditionFrames:
    """A condition's frames for a clip's windows, in order: computed from each window's frames,
    or read from its file as a stream in step with the clip (``read``: the clip's frame
    selection), so a long clip's maps never sit in memory at once."""

    def __init__(self, condition: Condition, read: io.ReadOptions | None = None):
        self.condition = condition
        self.read = _selection(read or io.ReadOptions())
        self._image: np.ndarray | None = None
        self._stream = None
        self._buffer = np.zeros((0, 0, 0, 3), np.uint8)
        self._buffer_start = 0      # clip index of the buffer's first frame

    def frames(self, start: int, frames: np.ndarray) -> np.ndarray:
        """The condition of the clip frames ``start .. start + F`` whose source frames (at the
        working size) are ``frames`` (F, H, W, 3) uint8 -> (F, H, W, 3) uint8 at their size."""
        kind, size = self.condition.kind, (frames.shape[2], frames.shape[1])
        if kind == "canny":
            return canny(frames, *(self.condition.thresholds or CANNY_THRESHOLDS))
        if kind == "softedge":
            return soft_edges(frames)
        if io.is_image(self.condition.path):
            if self._image is None:
                self._image = io.read_clip(self.condition.path, io.ReadOptions(max_frames=1))[0]   # (1, H, W, 3)
            return resize_to(self._image, size).repeat(len(frames), axis=0)
        return resize_to(self._read(start, len(frames)), size)

    def _read(self, start: int, n: int) -> np.ndarray:
        """Frames ``start .. start + n`` of the file, read forward in chunks (from its start
        again where an earlier frame is asked for)."""
        if self._stream is None or start < self._buffer_start:
            self._stream = io.read_frames(self.condition.path, dataclasses.replace(self.read, chunk_size=max(n, 1)))
            self._buffer, self._buffer_start = np.zeros((0, 0, 0, 3), np.uint8), 0
        while self._buffer_start + len(self._buffer) < start + n:
            chunk = next(self._stream, None)
            if chunk is None:
                raise VideditError(f"--control {self.condition} ended after {self._buffer_start + len(self._buffer)} "
                                   f"frames where the clip has more; give one map per source frame")
            self._buffer = chunk if len(self._buffer) == 0 else np.concatenate([self._buffer, chunk])
        drop = start - self._buffer_start
        self._buffer, self._buffer_start = self._buffer[drop:], start
        return self._buffer[:n]
