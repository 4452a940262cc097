"""Video decoding: a PyAV scan that checks the container, and two decoders.

decord gives fast random access (``get_batch``) but trusts the container's index: on a file
with broken timestamps it reports the declared frame count and pads with duplicates (on
camel-broken-timestamps.mp4 it returns 8 frames, the last a copy of the 7th). PyAV decodes
packets in order and yields what the decoder outputs, which is display order even when the
stored timestamps are wrong. So every video is first scanned with PyAV (demux only, no
decoding); a container that looks wrong is decoded fully with PyAV to count its frames, and
read with PyAV only. PyAV is also the default decoder of every file (see ``choose_backend``: its
memory stays flat, decord's grows with what it has read); decord reads where it is asked for.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import av
import numpy as np

from videdit.errors import VideditError

log = logging.getLogger(__name__)

# containers decord handles well; anything else (gif, ...) goes to PyAV
DECORD_FORMATS = {"mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi"}
# ffmpeg's demuxers that draw text files as video frames: tty (.txt, .ans, .nfo) and bintext's
TEXT_DEMUXERS = {"tty", "bin", "xbin", "idf", "adf"}


class BrokenVideoWarning(UserWarning):
    """The container is damaged; fewer frames than declared could be decoded."""


@dataclass(frozen=True)
class VideoMeta:
    """What the PyAV scan found. ``size`` is (W, H) as displayed (after rotation)."""

    size: tuple[int, int]
    fps: Fraction
    n_frames: int  # decodable frames
    declared: int  # frames the container declares (its packet count when it declares none)
    has_audio: bool
    rotation: int  # counter-clockwise degrees, a multiple of 90
    format: str
    problems: tuple[str, ...]  # why the container is not trusted; empty when sound
    pixel_aspect: Fraction = Fraction(1)   # a stored pixel's width over its height (``size`` is square pixels)
    times: tuple[float, ...] | None = None   # a variable frame rate: each frame's start (s) from the first

    @property
    def sound(self) -> bool:
        return not self.problems


@lru_cache(maxsize=1)
def load_decord() -> ModuleType | None:
    """The decord module, or None when it is not installed (it has no wheels for aarch64)."""
    try:
        import decord
    except ImportError:
        return None
    return decord


def open_container(path: Path) -> av.container.InputContainer:
    """Open ``path`` with PyAV, turning its errors into one-line VideditErrors."""
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise VideditError(
            f"{path} is not a readable video ({reason}); pass an mp4/mov/mkv/webm/gif file, "
            "a single image or a folder of frames"
        ) from e
    if not container.streams.video:
        container.close()
        raise VideditError(f"{path} has no video stream; pass a video file, an image or a folder of frames")
    if container.format.name in TEXT_DEMUXERS:   # ffmpeg draws any text file as frames of its characters
        container.close()
        raise VideditError(f"{path} is a text file, not a video; pass an mp4/mov/mkv/webm/gif file, "
                           "a single image or a folder of frames")
    return container


def decode(path: Path) -> Iterator[tuple[int, av.VideoFrame]]:
    """(index, frame) in decoder output (= display) order, skipping packets that fail to decode."""
    with open_container(path) as container:
        stream = container.streams.video[0]
        # no frame threading: with it, a packet that fails to decode takes the frames queued in
        # other threads with it (truncated truck.mp4: 3 frames instead of 5); slice threads are safe
        stream.thread_type = "SLICE"
        i = 0
        try:
            for packet in container.demux(stream):
                try:
                    frames = stream.decode(packet)  # an empty packet flushes the decoder
                except av.FFmpegError as e:
                    log.debug("%s: skipping a packet that does not decode (%s)", path, e)
                    continue
                for frame in frames:
                    yield i, frame
                    i += 1
        except av.FFmpegError as e:  # demuxing a truncated file can fail mid-way
            log.debug("%s: demuxing stopped (%s)", path, e)
            for frame in _flush(stream):
                yield i, frame
                i += 1


def _flush(stream: av.video.stream.VideoStream) -> list[av.VideoFrame]:
    try:
        return stream.decode(None)
    except av.FFmpegError:
        return []


def _rate(stream: av.video.stream.VideoStream, trust_average: bool) -> Fraction | None:
    """The stream's frame rate. A broken container's average rate counts frames that never
    decode (camel: 131072/58983 ~ 2.22 fps for frames spaced 0.5 s apart), so prefer the rate
    ffmpeg guesses from the timestamp spacing there."""
    rates = [stream.average_rate, stream.guessed_rate, stream.base_rate]
    if not trust_average:
        rates = rates[1:] + rates[:1]
    for rate in rates:
        if rate is not None and rate > 0:
            return Fraction(rate)
    return None


def _timing(path: Path, rate: Fraction, stamps: list[tuple[int, int]],
            time_base: Fraction) -> tuple[Fraction, tuple[float, ...] | None]:
    """The clip's rate and, for a variable frame rate, each frame's start in seconds from the first.

    The rate is the frames' mean on their own timestamps (first frame to the end of the last) where
    the stream's stated ``rate`` is more than 1% off it (a GIF states its first delay: 29.97 fps
    written as 3, 4, 3 hundredths reads as 33.3 fps), else ``rate``. Where a frame starts more than
    half a frame from where that rate puts it (phones drop frames; screen recordings pause), the
    frames keep their own times, and the outputs with them."""
    times = sorted(pts for pts, _ in stamps)
    intervals = [b - a for a, b in zip(times, times[1:]) if b > a]
    if not intervals or len(intervals) != len(times) - 1:
        return rate, None
    last_duration = next(d for pts, d in stamps if pts == times[-1]) or sorted(intervals)[len(intervals) // 2]
    span = Fraction(times[-1] - times[0] + last_duration) * time_base
    timed = Fraction(len(stamps)) / span if span > 0 else rate
    between = Fraction(len(intervals)) / (Fraction(times[-1] - times[0]) * time_base)   # the last frame aside
    if abs(timed / rate - 1) > Fraction(1, 100) and abs(between / rate - 1) > Fraction(1, 100):
        rate = timed.limit_denominator(1001)
    starts = tuple(float((t - times[0]) * time_base) for t in times)
    # how far a frame lies from the constant rate of the frames' own intervals (a last frame held long is no stray)
    drift = max(abs(t - i / float(between)) for i, t in enumerate(starts))
    if drift <= 0.5 / float(between):
        return rate, None
    log.info("%s: variable frame rate (frames up to %.3f s from a constant %.4g fps); kept at their own times",
             path, drift, float(between))
    return rate, starts


def scan(path: Path) -> VideoMeta:
    """Check the container (demux only) and count its frames; decode it all only when broken."""
    with open_container(path) as container:
        stream = container.streams.video[0]
        declared = stream.frames or 0  # 0: the container does not say (mkv, webm)
        fmt = container.format.name.split(",")[0]
        has_audio = bool(container.streams.audio)
        problems: list[str] = []
        n_packets = 0
        prev_dts = None
        stamps: list[tuple[int, int]] = []   # (pts, duration) of each packet that has them
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                n_packets += 1
                if packet.pts is not None:
                    stamps.append((packet.pts, packet.duration or 0))
                if packet.pts is None:
                    _note(problems, "frames without timestamps")
                elif packet.pts < 0:
                    _note(problems, "negative first PTS" if n_packets == 1 else "negative PTS")
                if packet.dts is not None:
                    if prev_dts is not None and packet.dts < prev_dts:
                        _note(problems, "decoding timestamps go backwards")
                    prev_dts = packet.dts
                if packet.is_discard or packet.is_corrupt:
                    _note(problems, "frames flagged corrupt or to be discarded")
        except av.FFmpegError as e:
            _note(problems, f"the file ends early ({getattr(e, 'strerror', None) or e})")
        if declared and declared != n_packets:
            _note(problems, f"{declared} frames declared but {n_packets} stored")
        declared = declared or n_packets
        rate = _rate(stream, trust_average=not problems)
        times = None
        if not problems and rate is not None and len(stamps) == n_packets >= 3 and stream.time_base is not None:
            rate, times = _timing(path, rate, stamps, stream.time_base)
        pixel_aspect = _pixel_aspect(stream)
    if n_packets == 0:
        raise VideditError(f"{path} has a video stream without frames; pass another video")
    if rate is None:
        raise VideditError(f"{path} does not state a frame rate; convert it to mp4 (e.g. with ffmpeg -r 25)")

    if problems:
        n_frames, rotation, size, out_of_order = 0, 0, None, False
        prev_pts = None
        for i, frame in decode(path):
            n_frames = i + 1
            if size is None:
                rotation, size = _rotation(frame), (frame.width, frame.height)
            if frame.pts is not None:
                out_of_order |= prev_pts is not None and frame.pts <= prev_pts
                prev_pts = frame.pts
        if out_of_order:
            _note(problems, "non-monotonic frame timestamps")
        if n_frames == 0:
            raise VideditError(f"{path} is not a readable video (none of its {declared} frames decode)")
        if n_frames != declared or out_of_order:
            what = (
                "the file is damaged or truncated"
                if any("ends early" in p or "declared but" in p for p in problems) and not out_of_order
                else "the container's timestamps are broken"
            )
            warnings.warn(
                f"{path}: {what} ({'; '.join(problems)}); {n_frames} of {declared} declared frames "
                "were decodable, read in decoding (display) order with PyAV",
                BrokenVideoWarning,
                stacklevel=2,
            )
    else:
        n_frames = n_packets
        frames = decode(path)
        try:
            first = next(frames, None)
        finally:
            frames.close()  # closes the container now, not at garbage collection
        if first is None:
            raise VideditError(f"{path} is not a readable video (its first frame does not decode)")
        rotation, size = _rotation(first[1]), (first[1].width, first[1].height)
    if pixel_aspect != 1:   # non-square pixels (anamorphic DV, broadcast): read at the shape they display
        size = (max(1, round(size[0] * pixel_aspect)), size[1])
        log.info("%s: pixels of aspect %s; read at %dx%d, the size it displays at", path, pixel_aspect, *size)
    if rotation % 180:
        size = (size[1], size[0])
    return VideoMeta(
        size=size,
        fps=rate,
        n_frames=n_frames,
        declared=declared,
        has_audio=has_audio,
        rotation=rotation,
        format=fmt,
        problems=tuple(problems),
        pixel_aspect=pixel_aspect,
        times=times,
    )


def _pixel_aspect(stream: av.video.stream.VideoStream) -> Fraction:
    """The stream's sample (pixel) aspect ratio; 1 where it states none."""
    try:
        ratio = stream.sample_aspect_ratio
    except (AttributeError, ValueError):
        return Fraction(1)
    return Fraction(ratio) if ratio is not None and ratio > 0 else Fraction(1)


def _note(problems: list[str], problem: str) -> None:
    if problem not in problems:
        problems.append(problem)


def _rotation(frame: av.VideoFrame) -> int:
    """Counter-clockwise display rotation from the display matrix, snapped to 90 degrees."""
    try:
        angle = frame.rotation or 0
    except (AttributeError, ValueError):
        return 0
    return int(90 * round(angle / 90)) % 360


def rgb(frame: av.VideoFrame, rotation: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB as displayed."""
    array = frame.to_ndarray(format="rgb24")
    if rotation:
        array = np.ascontiguousarray(np.rot90(array, k=rotation // 90))  # np.rot90 turns counter-clockwise
    return array


def pyav_frames(path: Path, indices: tuple[int, ...], rotation: int) -> Iterator[tuple[int, np.ndarray]]:
    """Decode sequentially, converting only the frames in ``indices`` (strictly increasing)."""
    if not indices:
        return
    k = 0
    for i, frame in decode(path):
        if i == indices[k]:
            yield i, rgb(frame, rotation)
            k += 1
            if k == len(indices):
                return


def choose_backend(path: Path, meta: VideoMeta, wanted: str) -> str:
    """"decord" or "pyav" for this file; ``wanted`` is "auto", "decord" or "pyav". "auto" is PyAV:
    the same pixels as decord, at flat memory. Read a window at a time while the model works, decord's
    reader grows with what it has read: ``python tools/bench.py memory --presets text2video-zero-canny
    --lengths 32 128 353 --steps 2 --backend decord`` (the 540x960 portrait clip) peaks at 667 / 1280 /
    1277 MiB, with ``--backend pyav`` 619 / 692 / 711 MiB; decord stays for random access where asked."""
    if wanted in ("pyav", "auto"):
        return "pyav"
    decord = load_decord()
    if decord is None:
        if wanted == "decord":
            raise VideditError(
                "backend 'decord' was asked for but decord is not installed; pip install decord, or use backend='pyav'"
            )
        return "pyav"
    if not meta.sound or meta.rotation or meta.pixel_aspect != 1 or meta.format not in DECORD_FORMATS:
        # decord pads broken files with duplicates and its rotation support is partial
        log.info("%s: reading with PyAV (%s)", path, "; ".join(meta.problems) or "not a decord case")
        return "pyav"
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        n = len(reader)
    except Exception as e:  # decord raises DECORDError, RuntimeError, ...
        warnings.warn(f"{path}: decord cannot open it ({_first_line(e)}); reading with PyAV", stacklevel=2)
        return "pyav"
    if n != meta.n_frames:
        warnings.warn(
            f"{path}: decord counts {n} frames, PyAV {meta.n_frames}; reading with PyAV", stacklevel=2
        )
        return "pyav"
    return "decord"


def decord_chunks(
    path: Path, indices: tuple[int, ...], chunk_size: int, size: tuple[int, int]
) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """(chunk indices, (n, H, W, 3) uint8) per chunk, decoding only those indices.

    Raises RuntimeError when decord fails or returns something unexpected, so that the caller
    can continue with PyAV.
    """
    decord = load_decord()
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    except Exception as e:
        raise RuntimeError(f"decord cannot open it: {_first_line(e)}") from e
    w, h = size
    for start in range(0, len(indices), chunk_size):
        chunk = indices[start : start + chunk_size]
        try:
            batch = reader.get_batch(list(chunk))
        except Exception as e:
            raise RuntimeError(f"decord get_batch failed: {_first_line(e)}") from e
        # another library may have set decord's bridge to torch; both have .numpy()/.asnumpy()
        array = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
        if array.shape != (len(chunk), h, w, 3) or array.dtype != np.uint8:
            raise RuntimeError(f"decord returned {array.shape} {array.dtype}, expected {(len(chunk), h, w, 3)} uint8")
        yield chunk, array


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]
