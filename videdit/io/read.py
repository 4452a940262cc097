"""Read a clip (video file, folder of frames, or single image) as chunks of RGB frames.

``probe`` says what ``read_frames`` will yield without decoding the frames; ``read_frames``
yields ``(n, H, W, 3)`` uint8 chunks and never holds more than one chunk of output (plus, on
the PyAV path, one decoded frame).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from videdit.errors import VideditError
from videdit.io import video
from videdit.io.options import (BACKENDS, ClipInfo, ReadOptions, as_fraction, resized_size, select_indices,
                                selected_times, time_span)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
BACKEND_ENV = "VIDEDIT_VIDEO_BACKEND"
_EXIF_ORIENTATION = 0x0112
_EXIF_TRANSPOSED = {5, 6, 7, 8}  # orientations that swap width and height


def is_image(path: str | os.PathLike) -> bool:
    """True for a single image file (png/jpg/jpeg/bmp/webp), judged by its suffix."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()


@dataclass(frozen=True)
class _Source:
    """A clip before any selection: everything ``probe`` needs and ``read_frames`` reuses."""

    path: Path
    kind: str
    size: tuple[int, int]  # (W, H)
    fps: Fraction | None
    n_frames: int
    has_audio: bool
    backend: str
    rotation: int = 0
    files: tuple[Path, ...] = ()
    times: tuple[float, ...] | None = None   # each frame's start (s), for a variable frame rate


def _natural_key(path: Path) -> tuple:
    """frame2 before frame10: digit runs compare as numbers."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name))


def _image_size(path: Path) -> tuple[int, int]:
    """(W, H) from the header, as cv2.imread will return it (EXIF rotation applied)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1) if im.format == "JPEG" else 1
    except (OSError, ValueError) as e:
        raise VideditError(f"{path} is not a readable image ({e})") from e
    return (h, w) if orientation in _EXIF_TRANSPOSED else (w, h)


def _load_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; 16-bit, grey and alpha images are converted, EXIF rotation applied."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise VideditError(f"{path} is not a readable image; re-save it as PNG or JPEG")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _video_backend(options: ReadOptions) -> str:
    if options.backend != "auto":
        return options.backend
    wanted = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if wanted not in BACKENDS:
        raise VideditError(f"{BACKEND_ENV}={wanted!r} is not a backend; choose from {list(BACKENDS)}")
    return wanted


def _open_source(path: Path, options: ReadOptions) -> _Source:
    if not path.exists():
        raise VideditError(f"no such file: {path}")
    if path.is_dir():
        files = sorted(
            (f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()), key=_natural_key
        )
        if not files:
            raise VideditError(
                f"no image frames ({'/'.join(s[1:] for s in IMAGE_SUFFIXES)}) in folder {path}; "
                "put frames such as 00000.png there or pass a video file"
            )
        size = _image_size(files[0])
        for f in files[1:]:
            if _image_size(f) != size:
                w, h = _image_size(f)
                raise VideditError(
                    f"{f} is {w}x{h} but {files[0].name} is {size[0]}x{size[1]}; "
                    "all frames in a folder must share one size"
                )
        fps = as_fraction(options.folder_fps)
        return _Source(path, "frames", size, fps, len(files), False, "images", files=tuple(files))
    if is_image(path):
        if options.start_s is not None or options.end_s is not None or options.fps is not None:
            raise VideditError(f"{path} is a single image; start_s/end_s/fps only apply to videos and frame folders")
        return _Source(path, "image", _image_size(path), None, 1, False, "images", files=(path,))
    meta = video.scan(path)
    backend = video.choose_backend(path, meta, _video_backend(options))
    return _Source(path, "video", meta.size, meta.fps, meta.n_frames, meta.has_audio, backend, meta.rotation,
                   times=meta.times)


def _info(source: _Source, options: ReadOptions) -> ClipInfo:
    name = str(source.path)
    indices, out_fps = select_indices(source.n_frames, source.fps, options, name, source.times)
    start_s, end_s = time_span(indices, source.fps, out_fps, source.n_frames, source.times)
    times = None if source.times is None else selected_times(indices, source.times)
    return ClipInfo(
        path=source.path,
        kind=source.kind,
        source_size=source.size,
        size=resized_size(source.size, options.size),
        fps=source.fps,
        out_fps=out_fps,
        indices=indices,
        start_s=start_s,
        end_s=end_s,
        has_audio=source.has_audio,
        backend=source.backend,
        source_frames=source.n_frames,
        times=times,
    )


def probe(path: str | os.PathLike, options: ReadOptions = ReadOptions()) -> ClipInfo:
    """What ``read_frames(path, options)`` will yield, without decoding frames (except for a
    damaged video, which is decoded once to count the frames that survive)."""
    return _info(_open_source(Path(path), options), options)


def _resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = frame.shape[:2]
    if (w, h) == size:
        return frame
    shrinking = size[0] * size[1] < w * h
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def _resize_chunk(chunk: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if chunk.shape[2] == size[0] and chunk.shape[1] == size[1]:
        return chunk
    return np.stack([_resize(f, size) for f in chunk])


def _frames(source: _Source, info: ClipInfo, chunk_size: int) -> Iterator[np.ndarray]:
    """Chunks of the frames at ``info.indices``."""
    if source.backend == "images":
        for start in range(0, info.n_frames, chunk_size):
            batch = []
            for i in info.indices[start : start + chunk_size]:
                frame = _load_image(source.files[i])
                if (frame.shape[1], frame.shape[0]) != source.size:
                    raise VideditError(
                        f"{source.files[i]} is {frame.shape[1]}x{frame.shape[0]} but the clip is "
                        f"{source.size[0]}x{source.size[1]}; all frames in a folder must share one size"
                    )
                batch.append(_resize(frame, info.size))
            yield np.stack(batch)  # (n, H, W, 3)
        return
    remaining = info.indices
    if source.backend == "decord":
        try:
            for chunk, array in video.decord_chunks(source.path, remaining, chunk_size, source.size):
                yield _resize_chunk(array, info.size)
                remaining = remaining[len(chunk) :]
            return
        except RuntimeError as e:
            warnings.warn(f"{source.path}: {e}; reading the remaining frames with PyAV", stacklevel=3)
    yield from _pyav_chunks(source, remaining, info, chunk_size)


def _pyav_chunks(
    source: _Source, indices: tuple[int, ...], info: ClipInfo, chunk_size: int
) -> Iterator[np.ndarray]:
    batch: list[np.ndarray] = []
    n_read = 0
    for _, frame in video.pyav_frames(source.path, indices, source.rotation):
        batch.append(_resize(frame, info.size))
        n_read += 1
        if len(batch) == chunk_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)
    if n_read < len(indices):  # the file changed or decodes differently from the scan
        raise VideditError(
            f"{source.path}: only {n_read} of the {len(indices)} selected frames decoded; "
            "the file may have changed since it was probed"
        )


def read_frames(path: str | os.PathLike, options: ReadOptions = ReadOptions()) -> Iterator[np.ndarray]:
    """Yield the selected frames as uint8 RGB chunks ``(n, H, W, 3)``, ``n <= options.chunk_size``.

    decord reads each chunk's indices with one ``get_batch``; PyAV decodes sequentially and
    converts only the selected frames. The clip is probed at the call, so a bad path or range
    raises here rather than at the first ``next``.
    """
    source = _open_source(Path(path), options)  # not a generator body: errors surface at the call
    return _frames(source, _info(source, options), options.chunk_size)


def read_selected(path: str | os.PathLike, options: ReadOptions, info: ClipInfo) -> Iterator[np.ndarray]:
    """Chunks of the frames at ``info.indices`` (a part of what ``probe(path, options)`` selected,
    e.g. a group of whole windows), read as :func:`read_frames` reads them."""
    return _frames(_open_source(Path(path), options), info, options.chunk_size)


def read_clip(path: str | os.PathLike, options: ReadOptions = ReadOptions()) -> tuple[np.ndarray, ClipInfo]:
    """All selected frames stacked, ``(F, H, W, 3)`` uint8, and their ``ClipInfo``."""
    source = _open_source(Path(path), options)
    info = _info(source, options)
    frames = np.concatenate(list(_frames(source, info, options.chunk_size)))
    return frames, info
