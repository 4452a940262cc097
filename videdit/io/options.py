"""What to read from a clip (``ReadOptions``), what was read (``ClipInfo``), and the pure
arithmetic between them: which source frames a range/stride/fps selects and how big a
resized frame is. No file access here."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from fractions import Fraction
from numbers import Integral, Real
from pathlib import Path

from videdit.errors import VideditError

BACKENDS = ("auto", "decord", "pyav")
CLIP_KINDS = ("video", "frames", "image")
READ_BACKENDS = ("decord", "pyav", "images")
SOURCE_SIZE = "source"  # ReadOptions.size: the source's own size


def _is_int(x: object) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def as_fraction(rate: float | Fraction | int) -> Fraction:
    """An exact frame rate: ints and Fractions as they are, floats to the nearest fraction with a
    denominator <= 100000 (so 29.97002997 -> 30000/1001 and 29.97 -> 2997/100)."""
    if isinstance(rate, (Fraction, Integral)):
        return Fraction(rate)
    return Fraction(rate).limit_denominator(100_000)


@dataclass(frozen=True)
class ReadOptions:
    """Which frames to read and how to shape them.

    The range is given either in frames (``start_frame``/``end_frame``, end exclusive, clamped to
    the clip's length like a slice) or in seconds (``start_s``/``end_s``: the frames whose start
    time ``i / fps`` lies in ``[start_s, end_s)``), not both. Within the range, every
    ``stride``-th frame is taken, or, with ``fps``, the source frame nearest to each tick
    ``start + k / fps`` (``fps`` may not exceed the source rate). ``max_frames`` then keeps the
    first ones. ``size`` resizes: an int makes the short side that long, the long side
    ``round(long * size / short)`` (half up), e.g. 288x512 at 256 -> 256x455; a ``(W, H)`` pair is
    exact; None or "source" keep the source's size (the pipeline reads None as "the model's native
    size" and "source" as the source's, see ``videdit.pipeline.working_size``). ``folder_fps`` is
    the rate assumed for a folder of frames. ``backend`` picks the video decoder ("auto": PyAV, whose
    memory stays flat however long the clip, see ``video.choose_backend``; "decord": decord's random
    access, falling back to PyAV on files it misreads; "auto" defers to the environment variable
    ``VIDEDIT_VIDEO_BACKEND`` when that is set).
    """

    start_frame: int = 0
    end_frame: int | None = None
    start_s: float | None = None
    end_s: float | None = None
    stride: int = 1
    fps: float | None = None
    max_frames: int | None = None
    size: int | tuple[int, int] | str | None = None
    chunk_size: int = 16
    folder_fps: float = 8
    backend: str = "auto"

    def __post_init__(self) -> None:
        if not _is_int(self.start_frame) or self.start_frame < 0:
            raise VideditError(f"start_frame must be an integer >= 0, got {self.start_frame!r}")
        if self.end_frame is not None and (not _is_int(self.end_frame) or self.end_frame <= self.start_frame):
            raise VideditError(
                f"end_frame must be an integer > start_frame ({self.start_frame}), got {self.end_frame!r}"
            )
        for name in ("start_s", "end_s"):
            value = getattr(self, name)
            if value is not None and (not _is_real(value) or not math.isfinite(value) or value < 0):
                raise VideditError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if self.start_s is not None and self.end_s is not None and self.end_s <= self.start_s:
            raise VideditError(f"the end ({self.end_s} s: --end, end_s) must be after the start ({self.start_s} s: "
                               "--start, start_s)")
        if (self.start_s is not None or self.end_s is not None) and (
            self.start_frame != 0 or self.end_frame is not None
        ):
            raise VideditError(
                "give the range either in frames (--start-frame/--end-frame, start_frame/end_frame) or in seconds "
                "(--start/--end, start_s/end_s), not both"
            )
        if not _is_int(self.stride) or self.stride < 1:
            raise VideditError(f"stride must be an integer >= 1, got {self.stride!r}")
        if self.fps is not None:
            if not _is_real(self.fps) or not math.isfinite(self.fps) or self.fps <= 0:
                raise VideditError(f"fps must be a number > 0, got {self.fps!r}")
            if self.stride > 1:
                raise VideditError(
                    f"give either stride ({self.stride}) or a target fps ({self.fps}), not both"
                )
        if self.max_frames is not None and (not _is_int(self.max_frames) or self.max_frames < 1):
            raise VideditError(f"max_frames must be an integer >= 1 (or None for all), got {self.max_frames!r}")
        if isinstance(self.size, list):  # YAML gives lists; a frozen field still takes a tuple
            object.__setattr__(self, "size", tuple(self.size))
        if isinstance(self.size, str) and self.size != SOURCE_SIZE:   # "512", "640x360" as --size takes them
            try:
                object.__setattr__(self, "size", parse_size(self.size))
            except ValueError:
                pass   # refused below
        if self.size is not None and self.size != SOURCE_SIZE:
            if _is_int(self.size):
                if self.size < 1:
                    raise VideditError(f"size must be >= 1 (the short side in pixels), got {self.size}")
            elif not (
                isinstance(self.size, tuple)
                and len(self.size) == 2
                and all(_is_int(s) and s >= 1 for s in self.size)
            ):
                raise VideditError(
                    f"size must be an int (short side), a (width, height) pair of ints >= 1, \"WxH\" or "
                    f"{SOURCE_SIZE!r}, got {self.size!r}"
                )
        if not _is_int(self.chunk_size) or self.chunk_size < 1:
            raise VideditError(f"chunk_size must be an integer >= 1, got {self.chunk_size!r}")
        if not _is_real(self.folder_fps) or not math.isfinite(self.folder_fps) or self.folder_fps <= 0:
            raise VideditError(f"folder_fps must be a number > 0, got {self.folder_fps!r}")
        if self.backend not in BACKENDS:
            raise VideditError(f"unknown backend {self.backend!r}; choose from {list(BACKENDS)}")


@dataclass(frozen=True)
class ClipInfo:
    """What ``probe`` found and what ``read_frames`` will yield.

    ``start_s``/``end_s`` bound the selected frames in source time: ``end_s = start_s +
    n_frames / out_fps`` (capped at the source's end), so audio cut to ``[start_s, end_s)`` lasts
    as long as the frames played at ``out_fps``; for a clip of variable frame rate (``times``)
    ``end_s`` is where the last selected frame ends in the source. ``source_frames`` is the number of decodable
    frames in the source (for a broken container, fewer than it declares).
    """

    path: Path
    kind: str
    source_size: tuple[int, int]  # (W, H)
    size: tuple[int, int]  # (W, H) as yielded
    fps: Fraction | None
    out_fps: Fraction | None
    indices: tuple[int, ...]
    start_s: float
    end_s: float
    has_audio: bool
    backend: str
    source_frames: int | None = None
    # a clip of variable frame rate: each selected frame's start in seconds from the first (None: every
    # 1 / out_fps); the outputs keep them
    times: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in CLIP_KINDS:
            raise VideditError(f"unknown clip kind {self.kind!r}; choose from {list(CLIP_KINDS)}")
        if self.backend not in READ_BACKENDS:
            raise VideditError(f"unknown read backend {self.backend!r}; choose from {list(READ_BACKENDS)}")
        for name in ("source_size", "size"):
            wh = getattr(self, name)
            if len(wh) != 2 or min(wh) < 1:
                raise VideditError(f"{name} must be a (width, height) pair >= 1, got {wh!r}")

    @property
    def n_frames(self) -> int:
        """Number of frames ``read_frames`` yields."""
        return len(self.indices)

    def timing(self) -> dict:
        """``write_gif``'s ``times`` and ``duration`` for a clip of variable frame rate; none otherwise."""
        return {} if self.times is None else {"times": self.times, "duration": self.end_s - self.start_s}


def parse_size(text: str) -> int | tuple[int, int] | str:
    """"512" (short side), "640x360" (width x height) or "source" (the source's own size); ValueError
    for anything else."""
    if text.strip().lower() == SOURCE_SIZE:
        return SOURCE_SIZE
    if "x" in text.lower():
        w, h = text.lower().split("x")
        return int(w), int(h)
    return int(text)


def resized_size(source: tuple[int, int], size: int | tuple[int, int] | str | None) -> tuple[int, int]:
    """(W, H) after resizing ``source`` (W, H): short side to ``size`` with the long side rounded
    half up (min 1), exactly ``size`` when it is a (W, H) pair, ``source`` for None or "source"."""
    if size is None or size == SOURCE_SIZE:
        return source
    if isinstance(size, tuple):
        return (int(size[0]), int(size[1]))
    w, h = source
    short, long = min(w, h), max(w, h)
    new_long = max(1, math.floor(Fraction(long * size, short) + Fraction(1, 2)))
    return (size, new_long) if w <= h else (new_long, size)


def _round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def _first_frame_at(t: float, fps: Fraction, times: tuple[float, ...] | None = None) -> int:
    """Index of the first frame starting at or after ``t`` seconds (1e-9 s absorbs float noise):
    frame ``i`` starts at ``times[i]`` where given, else at ``i / fps``."""
    if times is not None:
        return bisect.bisect_left(times, t - 1e-9)
    return max(0, math.ceil(Fraction(t).limit_denominator(10**9) * fps - Fraction(1, 10**9)))


def frame_range(n_source: int, fps: Fraction | None, options: ReadOptions, name: str,
                times: tuple[float, ...] | None = None) -> tuple[int, int]:
    """The [start, end) source frame range the options ask for; frame ``i`` starts at ``times[i]``
    (a clip of variable frame rate) or ``i / fps``.

    Raises when the start is past the end of the clip or the range selects nothing.
    """
    if options.start_s is not None or options.end_s is not None:
        if fps is None:
            raise VideditError(f"{name} is a single image; start_s/end_s need a clip with a frame rate")
        start = _first_frame_at(options.start_s, fps, times) if options.start_s is not None else 0
        end = _first_frame_at(options.end_s, fps, times) if options.end_s is not None else n_source
        if start >= n_source:
            raise VideditError(
                f"the start {options.start_s} s (--start, start_s; frame {start}) is past the end of {name} "
                f"({n_source} frames, {float(n_source / fps):.3f} s)"
            )
    else:
        start = options.start_frame
        end = n_source if options.end_frame is None else options.end_frame
        if start >= n_source:
            raise VideditError(f"start frame {start} (--start-frame, start_frame) is past the end of {name} "
                               f"({n_source} frames)")
    end = min(end, n_source)
    if end <= start:
        raise VideditError(
            f"the range [{options.start_s}, {options.end_s}) s selects no frame of {name} "
            f"(frames start every {float(1 / fps):.4f} s); widen it"
        )
    return start, end


def select_indices(
    n_source: int, fps: Fraction | None, options: ReadOptions, name: str, times: tuple[float, ...] | None = None
) -> tuple[tuple[int, ...], Fraction | None]:
    """Source frame indices to read (strictly increasing) and the rate they play at. ``times``: each
    source frame's start in seconds, for a clip of variable frame rate (``fps`` its mean rate); a
    target ``fps`` then takes the frame nearest each tick, once."""
    start, end = frame_range(n_source, fps, options, name, times)
    if options.fps is not None and fps is not None and as_fraction(options.fps) > fps:
        raise VideditError(
            f"fps {options.fps} is above the source rate of {name} ({float(fps):.4g} fps); "
            f"choose fps <= {float(fps):.4g} or leave it out"
        )
    out_fps: Fraction | None
    if options.fps is not None and fps is not None and times is not None:
        target = as_fraction(options.fps)
        indices = []
        k = 0
        while (tick := times[start] + k / target) < times[end - 1] + 1e-9:
            i = min(max(bisect.bisect_left(times, tick) - 1, start), end - 1)
            if i + 1 < end and abs(times[i + 1] - tick) <= abs(times[i] - tick) + 1e-9:   # a tie: the later, as
                i += 1                                                                     # half up rounds
            if not indices or i > indices[-1]:
                indices.append(i)
            k += 1
        out_fps = target
    elif options.fps is not None and fps is not None:
        target = as_fraction(options.fps)
        step = fps / target  # source frames per output frame, >= 1
        indices = []
        k = 0
        while (k * step) < (end - start):  # tick k at time start/fps + k/target
            i = start + _round_half_up(k * step)
            if i >= end:  # nearest frame lies outside the range
                break
            indices.append(i)
            k += 1
        out_fps = target
    else:
        indices = list(range(start, end, options.stride))
        out_fps = None if fps is None else fps / options.stride
    if options.max_frames is not None:
        indices = indices[: options.max_frames]
    return tuple(indices), out_fps


def time_span(
    indices: tuple[int, ...], fps: Fraction | None, out_fps: Fraction | None, n_source: int,
    times: tuple[float, ...] | None = None,
) -> tuple[float, float]:
    """(start_s, end_s) of the selected frames; see ``ClipInfo``."""
    if fps is None or out_fps is None:
        return 0.0, 0.0
    if times is not None:
        # the last frame ends where the source's next frame past a stride or a resampling starts, else at the
        # clip's end (its last frame held for a mean interval)
        after = indices[-1] + (indices[-1] - indices[-2] if len(indices) > 1 else 1)
        return times[indices[0]], times[after] if after < n_source else times[-1] + float(1 / fps)
    start = Fraction(indices[0]) / fps
    end = min(start + len(indices) / out_fps, Fraction(n_source) / fps)
    return float(start), float(end)


def selected_times(indices: tuple[int, ...], times: tuple[float, ...]) -> tuple[float, ...]:
    """The selected frames' starts in seconds from the first of them."""
    return tuple(times[i] - times[indices[0]] for i in indices)
