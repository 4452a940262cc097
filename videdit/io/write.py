"""Write frames: videos (H.264 with the source's audio), frame folders, images, GIF previews.

Every writer is atomic (``atomic_path``): the output appears complete or not at all, and a
failure leaves no temporary file behind. Frames come as uint8 RGB chunks ``(n, H, W, 3)``
(single ``(H, W, 3)`` frames are accepted too) from any iterable, so a whole clip need not be
in memory.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from itertools import chain
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

from videdit.errors import VideditError
from videdit.io.atomic import atomic_path
from videdit.io.options import ClipInfo, as_fraction
from videdit.io.read import IMAGE_SUFFIXES

# suffix -> (muxer, video encoder, audio encoder, audio rate or None to keep the source's)
VIDEO_FORMATS = {
    ".mp4": ("mp4", "libx264", "aac", None),
    ".mov": ("mov", "libx264", "aac", None),
    ".mkv": ("matroska", "libx264", "aac", None),
    ".webm": ("webm", "libvpx-vp9", "libopus", 48000),  # webm allows only VP8/VP9/AV1 + Vorbis/Opus
}
AUDIO_FRAME_SIZE = {"aac": 1024, "libopus": 960}
GIF_SUFFIX = ".gif"

Chunks = Iterable[np.ndarray] | np.ndarray


def _chunks(chunks: Chunks, what: str) -> Iterator[np.ndarray]:
    """Validated ``(n, H, W, 3)`` uint8 chunks of one size from an array or an iterable."""
    if isinstance(chunks, np.ndarray):
        chunks = [chunks]
    size = None
    for chunk in chunks:
        chunk = np.asarray(chunk)
        if chunk.ndim == 3:
            chunk = chunk[None]  # one (H, W, 3) frame
        if chunk.ndim != 4 or chunk.shape[-1] != 3 or chunk.dtype != np.uint8:
            raise VideditError(
                f"frames for {what} must be uint8 RGB arrays (n, H, W, 3), got {chunk.dtype} {chunk.shape}; "
                "convert with (x.clip(0, 1) * 255).round().astype(np.uint8)"
            )
        if size is None:
            size = chunk.shape[1:3]
        elif chunk.shape[1:3] != size:
            raise VideditError(
                f"frames for {what} change size from {size[1]}x{size[0]} to {chunk.shape[2]}x{chunk.shape[1]}; "
                "all frames must share one size"
            )
        if len(chunk):
            yield chunk


def _frames(chunks: Chunks, what: str) -> Iterator[np.ndarray]:
    for chunk in _chunks(chunks, what):
        yield from chunk


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """Repeat the last column/row once where W/H is odd: H.264 in yuv420p needs even sizes."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _audio_length(path: Path) -> float | None:
    """Seconds of audio in ``path`` (inf when the container does not say); None without audio."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return container.duration / av.time_base if container.duration else math.inf
    except av.FFmpegError as e:
        raise VideditError(f"cannot read audio from {path} ({e}); pass audio_from=None to write without audio") from e


AUDIO_GAP_S = 0.02   # audio that starts this much after where it is wanted, or skips as much, is preceded by silence
VFR_CLOCK = 90000   # ticks a second of a variable-frame-rate video's timestamps (MPEG's clock)


def write_video(
    path: str | os.PathLike,
    chunks: Chunks,
    fps: Fraction | float,
    *,
    audio_from: Path | None = None,
    audio_start_s: float = 0.0,
    audio_end_s: float | None = None,
    crf: int = 18,
    times: Sequence[float] | None = None,
) -> Path:
    """Encode frames at exactly ``fps`` (H.264/yuv420p for mp4/mov/mkv, VP9 for webm).

    The time base is ``1 / fps`` and frame ``i`` has pts ``i``, so 30000/1001 reads back exactly;
    with ``times`` (a clip of variable frame rate: each frame's start in seconds, from 0) frame
    ``i`` starts at ``times[i]``, on a clock of 1/90000 s.
    Odd widths/heights are padded by repeating the last column/row once (yuv420p needs even
    sizes; no pixel is resampled), so a 717x717 clip is written as 718x718, with a warning.
    When ``audio_from`` has an audio stream, its audio in ``[audio_start_s, audio_end_s)`` is
    decoded, cut to the sample and re-encoded (AAC, Opus for webm); remuxing would cut only at
    1024-sample packet edges and lose the priming of the first packet. ``audio_end_s`` defaults
    to ``audio_start_s`` plus the written video's duration.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_FORMATS:
        raise VideditError(f"cannot write a video to {path}; use one of {sorted(VIDEO_FORMATS)}")
    muxer, video_codec, audio_codec, audio_rate = VIDEO_FORMATS[suffix]
    rate = as_fraction(fps)
    if rate <= 0:
        raise VideditError(f"fps must be > 0, got {fps}")
    max_crf = 63 if video_codec == "libvpx-vp9" else 51
    if not 0 <= crf <= max_crf:
        raise VideditError(f"crf must be in 0..{max_crf} (lower is better quality), got {crf}")
    if audio_start_s < 0 or (audio_end_s is not None and audio_end_s <= audio_start_s):
        raise VideditError(f"audio range [{audio_start_s}, {audio_end_s}) is empty or negative")
    with_audio = False
    if audio_from is not None:
        length = _audio_length(Path(audio_from))
        with_audio = length is not None and audio_start_s < length
        if length is not None and not with_audio:
            warnings.warn(
                f"{audio_from}'s audio ends at {length:.3f} s, before audio_start_s={audio_start_s}; "
                f"writing {path} without audio",
                stacklevel=2,
            )

    frames = _frames(chunks, str(path))
    first = next(frames, None)
    if first is None:
        raise VideditError(f"no frames to write to {path}")
    h, w = first.shape[:2]
    if w % 2 or h % 2:
        warnings.warn(
            f"{path}: {w}x{h} is odd; padded to {w + w % 2}x{h + h % 2} by repeating the edge "
            "(H.264 yuv420p needs even sizes)",
            stacklevel=2,
        )
    with atomic_path(path) as tmp:
        try:
            with av.open(str(tmp), "w", format=muxer) as container:
                stream = container.add_stream(video_codec, rate=rate)
                stream.width, stream.height = w + w % 2, h + h % 2
                stream.pix_fmt = "yuv420p"
                stream.codec_context.time_base = 1 / rate if times is None else Fraction(1, VFR_CLOCK)
                stream.options = {"crf": str(crf)}
                if video_codec == "libvpx-vp9":
                    stream.options |= {"b:v": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}
                audio = None
                if with_audio:
                    audio = _add_audio_stream(container, Path(audio_from), audio_codec, audio_rate)
                n = 0
                for frame in chain([first], frames):
                    # to yuv420p here, by a fresh one-thread swscale per frame: the encoder's own conversion (a
                    # reused, auto-threaded swscale context) gave different bytes for the same frames now and then
                    # (7 of 25 encodes of one 64x64 clip under CPU load, up to 13 levels once decoded)
                    video_frame = av.VideoFrame.from_ndarray(_pad_even(frame), format="rgb24").reformat(
                        format="yuv420p", threads=1)
                    video_frame.pts = n if times is None else round(times[n] * VFR_CLOCK)
                    video_frame.time_base = stream.codec_context.time_base
                    container.mux(stream.encode(video_frame))
                    n += 1
                container.mux(stream.encode(None))
                if audio is not None:
                    end_s = audio_start_s + float(n / rate) if audio_end_s is None else audio_end_s
                    _copy_audio(container, audio, Path(audio_from), audio_start_s, end_s)
        except av.FFmpegError as e:
            raise VideditError(f"could not write {path} ({e})") from e
    return path


def _add_audio_stream(
    container: av.container.OutputContainer, source: Path, codec: str, rate: int | None
) -> av.audio.stream.AudioStream:
    with av.open(str(source)) as src:
        ctx = src.streams.audio[0].codec_context
        rate = rate or ctx.sample_rate
        layout = ctx.layout.name if ctx.channels <= 2 else "stereo"
    stream = container.add_stream(codec, rate=rate, layout=layout)
    stream.codec_context.format = av.Codec(codec, "w").audio_formats[0]
    return stream


def _copy_audio(
    container: av.container.OutputContainer,
    stream: av.audio.stream.AudioStream,
    source: Path,
    start_s: float,
    end_s: float,
) -> None:
    """Decode ``source``'s first audio stream, keep the samples in [start_s, end_s) of its first
    video frame's clock (where the video starts later than the audio, the audio that plays with
    it), silence where the audio starts later or skips, encode."""
    ctx = stream.codec_context
    resampler = av.AudioResampler(
        format=ctx.format.name,
        layout=ctx.layout.name,
        rate=ctx.sample_rate,
        frame_size=AUDIO_FRAME_SIZE.get(ctx.name, 1024),
    )
    out_pts = 0

    def encode(frames: list[av.AudioFrame]) -> None:
        nonlocal out_pts
        for frame in frames:
            frame.pts = out_pts
            frame.time_base = Fraction(1, ctx.sample_rate)
            out_pts += frame.samples
            container.mux(stream.encode(frame))

    with av.open(str(source)) as src:
        audio = src.streams.audio[0]
        src_rate = audio.codec_context.sample_rate
        origin = _video_start(src)
        first, last = round((origin + start_s) * src_rate), round((origin + end_s) * src_rate)  # sample range
        position, written = 0, first   # the next sample expected from the source (untimed frames count on) / to write
        for frame in src.decode(audio):
            s0 = round(frame.time * src_rate) if frame.time is not None else position
            s1 = position = s0 + frame.samples
            if s1 <= first:
                continue
            if s0 >= last:
                break
            # the audio starts later than the kept range, or skips (a coarse clock's rounding, under 20 ms, is no gap)
            if s0 - written > AUDIO_GAP_S * src_rate:
                encode(resampler.resample(_silence(frame, min(s0, last) - written)))
            lo, hi = max(first - s0, 0), min(last, s1) - s0
            if lo > 0 or hi < frame.samples:
                frame = _slice_audio(frame, lo, hi)
            frame.pts = None  # the resampler and encode() retime
            encode(resampler.resample(frame))
            written = max(written, s0 + hi)
    encode(resampler.resample(None))
    container.mux(stream.encode(None))


def _video_start(container: av.container.InputContainer) -> float:
    """Seconds on the container's clock at which its first video stream starts (0 without one)."""
    video = container.streams.video[0] if container.streams.video else None
    if video is None or video.start_time is None or video.time_base is None:
        return 0.0
    return float(video.start_time * video.time_base)


def _silence(like: av.AudioFrame, samples: int) -> av.AudioFrame:
    """``samples`` of silence in ``like``'s format, layout and rate."""
    channels = len(like.layout.channels)
    shape = (channels, samples) if like.format.is_planar else (1, samples * channels)
    quiet = 128 if like.format.name.startswith("u8") else 0   # unsigned 8-bit audio is silent at its middle
    out = av.AudioFrame.from_ndarray(np.full(shape, quiet, like.to_ndarray().dtype), format=like.format.name,
                                     layout=like.layout.name)
    out.sample_rate = like.sample_rate
    return out


def _slice_audio(frame: av.AudioFrame, lo: int, hi: int) -> av.AudioFrame:
    """Samples [lo, hi) of ``frame``."""
    array = frame.to_ndarray()  # planar: (channels, samples); packed: (1, samples * channels)
    if frame.format.is_planar:
        array = array[:, lo:hi]
    else:
        channels = len(frame.layout.channels)
        array = array[:, lo * channels : hi * channels]
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(array), format=frame.format.name, layout=frame.layout.name)
    out.sample_rate = frame.sample_rate
    return out


def write_frames_dir(path: str | os.PathLike, chunks: Chunks, *, overwrite: bool = False) -> Path:
    """Write frames as ``00000.png, 00001.png, ...`` into the folder ``path``.

    The folder is built under a temporary name and renamed into place. An existing non-empty
    folder is replaced only with ``overwrite=True``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VideditError(f"{path} is a file; a frame folder needs a folder path (no suffix)")
    check_frames_folder(path, overwrite)
    with atomic_path(path, replace_dir=True) as tmp:
        tmp.mkdir()
        n = 0
        for frame in _frames(chunks, str(path)):
            target = tmp / f"{n:05d}.png"
            if not cv2.imwrite(str(target), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)):
                raise VideditError(f"could not write {target}; is the disk full?")
            n += 1
        if n == 0:
            raise VideditError(f"no frames to write to {path}")
    return path


def write_image(path: str | os.PathLike, frame: np.ndarray) -> Path:
    """Write one ``(H, W, 3)`` (or ``(1, H, W, 3)``) uint8 RGB frame as PNG/JPEG/BMP/WebP."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise VideditError(f"cannot write an image to {path}; use one of {list(IMAGE_SUFFIXES)}")
    chunks = list(_chunks(frame, str(path)))
    if sum(len(c) for c in chunks) != 1:
        raise VideditError(f"{path} holds one frame but got {sum(len(c) for c in chunks)}; write a video or a folder")
    bgr = cv2.cvtColor(chunks[0][0], cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix.lower() in (".jpg", ".jpeg") else []
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), bgr, params):
            raise VideditError(f"could not write {path}; is the disk full?")
    return path


def _panel_size(w: int, h: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def gif_delays(n: int, fps: float) -> list[int]:
    """The delays, in centiseconds, of ``n`` GIF frames shown at ``fps`` (<= 50).

    GIF delays are whole centiseconds, so one delay for all frames would play 29.97 fps at 33.3 and
    8 fps at 7.7. Each frame here ends at its own time rounded to the centisecond instead (29.97
    fps: 3, 4, 3, 3, 4, ... cs), so frame k is never more than half a centisecond off the clip's
    clock and the GIF lasts as long as the clip. None is under 2 cs, below which players slow a
    frame to 10 cs (fps <= 50 keeps them there)."""
    return gif_delays_until([Fraction(k + 1) / as_fraction(fps) for k in range(n)])


def gif_delays_until(ends: list) -> list[int]:
    """The delays, in centiseconds, of GIF frames that end at ``ends`` seconds (increasing, from a
    start at 0), each end rounded to the centisecond as :func:`gif_delays` does."""
    rounded = [math.floor(100 * end + Fraction(1, 2)) for end in ends]
    return [max(2, end - start) for start, end in zip([0] + rounded, rounded)]


def write_gif(
    path: str | os.PathLike,
    frames: Chunks,
    fps: float,
    *,
    source: np.ndarray | None = None,
    max_side: int = 256,
    max_fps: float = 12,
    max_frames: int = 48,
    times: Sequence[float] | None = None,
    duration: float | None = None,
) -> Path:
    """A looping GIF preview: ``source | edit`` side by side when ``source`` is given. ``times`` and
    ``duration`` (a clip of variable frame rate): each frame's start and the clip's length in
    seconds, in place of ``fps``'s clock.

    Each panel is downscaled so its longer side is <= ``max_side`` (the source panel is resized
    to the edit's panel). Above ``max_fps`` every k-th frame is kept (k = ceil(fps / max_fps));
    beyond ``max_frames`` frames are then picked evenly, and the frame rate lowered to match, so
    the preview lasts as long as the clip, at the clip's pace: see :func:`gif_delays`.
    """
    path = Path(path)
    if path.suffix.lower() != GIF_SUFFIX:
        raise VideditError(f"{path} would hold a GIF; give it a .gif name")
    if not (fps > 0 and max_fps > 0 and max_side >= 1 and max_frames >= 1):
        raise VideditError(
            f"fps, max_fps, max_side and max_frames must be positive, got {fps}, {max_fps}, {max_side}, {max_frames}"
        )
    if max_fps > 50:
        raise VideditError(f"max_fps must be <= 50 (players slow shorter GIF frames to 100 ms), got {max_fps}")
    step = max(1, math.ceil(fps / max_fps - 1e-9))
    kept: list[np.ndarray] = []  # downscaled frames, every step-th
    n_total = 0
    panel = None
    for frame in _frames(frames, str(path)):
        if panel is None:
            panel = _panel_size(frame.shape[1], frame.shape[0], max_side)
        if n_total % step == 0:
            kept.append(cv2.resize(frame, panel, interpolation=cv2.INTER_AREA))
        n_total += 1
    if not kept:
        raise VideditError(f"no frames to write to {path}")
    picked = list(range(0, n_total, step))  # source frame index of each kept frame
    if times is not None and (len(times) != n_total or duration is None):
        raise VideditError(f"times for {path} must give each of its {n_total} frames a start, with the duration")

    def at(i: int):   # frame i's start; i = n_total: the clip's end
        if times is None:
            return Fraction(i) / as_fraction(fps)
        return duration if i == n_total else times[i]

    # each kept frame shows until the next kept one's time, the last until the clip's end
    ends = [at(i) for i in [*picked[1:], n_total]]
    if len(kept) > max_frames:
        choice = np.linspace(0, len(kept) - 1, max_frames).round().astype(int)
        kept = [kept[i] for i in choice]
        picked = [picked[i] for i in choice]
        # evenly paced over the clip's length (the picks are 2 or 3 frames apart and would jerk)
        ends = [at(n_total) * (k + 1) / max_frames for k in range(max_frames)]
    if source is not None:
        source = np.asarray(source)
        if source.ndim != 4 or source.shape[-1] != 3 or source.dtype != np.uint8 or len(source) != n_total:
            raise VideditError(
                f"source for {path} must be uint8 (n, H, W, 3) with one frame per edited frame ({n_total}), "
                f"got {source.dtype} {source.shape}"
            )
        kept = [
            np.concatenate([cv2.resize(source[i], panel, interpolation=cv2.INTER_AREA), frame], axis=1)
            for i, frame in zip(picked, kept)
        ]
    images = [Image.fromarray(frame) for frame in kept]
    with atomic_path(path) as tmp:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=[10 * cs for cs in gif_delays_until(ends)],
            loop=0,
        )
    return path


def _output_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == "":
        return "frames"
    if suffix in VIDEO_FORMATS:
        return "video"
    if suffix == GIF_SUFFIX:
        return "gif"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    raise VideditError(
        f"cannot write {path}: unknown suffix {suffix!r}; use {', '.join(sorted(VIDEO_FORMATS))}, "
        f"{GIF_SUFFIX}, {', '.join(IMAGE_SUFFIXES)} or a folder path without suffix"
    )


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _same_file(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or (a.exists() and b.exists() and os.path.samefile(a, b))


def check_frames_folder(path: Path, overwrite: bool, flag: str = "-o") -> None:
    """Refuse a non-empty frame folder without ``overwrite``, and with it one that holds anything but
    frames (images): replacing the folder would delete the rest."""
    if not path.is_dir():
        return
    entries = list(path.iterdir())
    if entries and not overwrite:
        raise VideditError(f"{path} already exists and is not empty; choose another {flag} path or pass --overwrite "
                           f"(overwrite=True) to replace its frames")
    others = sorted(e.name + ("/" if e.is_dir() else "") for e in entries
                    if not (e.is_file() and e.suffix.lower() in IMAGE_SUFFIXES))
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise VideditError(f"{path} holds more than frames ({shown}), which --overwrite would delete; choose "
                           f"another {flag} path")


def check_output_path(output: str | os.PathLike, input_path: str | os.PathLike | None, flag: str = "-o",
                      overwrite: bool | None = None) -> None:
    """Refuse an output that would overwrite the input (``input_path``; None: an input held in
    memory), one whose folder does not exist or cannot be written, and (where ``overwrite`` is
    given) a frame folder that :func:`write_frames_dir` would refuse; ``flag`` names the option
    that gave it in the message.

    Call it before the (slow) edit, so a bad ``-o`` fails early.
    """
    out = Path(output).resolve()
    if out == out.parent:
        raise VideditError(f"cannot write to {output}, the file system's root; choose another {flag} path")
    kind = _output_kind(Path(output))
    inp = Path(input_path).resolve() if input_path is not None else None
    if inp is not None and (_same_file(out, inp) or (inp.is_dir() and _is_within(out, inp))):
        raise VideditError(f"refusing to overwrite the input {input_path} with {output}; choose another {flag} path")
    if kind == "frames" and inp is not None and _is_within(inp, out):
        raise VideditError(
            f"refusing to write frames to {output}: the input {input_path} is inside it; choose another {flag} path"
        )
    if out.parent.exists() and not out.parent.is_dir():
        raise VideditError(f"{out.parent} is a file, not a folder; choose another {flag} path")
    if not out.parent.is_dir():
        raise VideditError(f"the output folder {out.parent} does not exist; create it or choose another {flag} path")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise VideditError(f"cannot write in {out.parent} (read-only or not yours); choose another {flag} path")
    if kind == "frames" and overwrite is not None:
        check_frames_folder(out, overwrite, flag)


def check_preview_path(preview: str | os.PathLike, input_path: str | os.PathLike,
                       output: str | os.PathLike | None) -> None:
    """:func:`check_output_path` for a ``--preview`` GIF, which must not be the edit's own output either."""
    if Path(preview).suffix.lower() != GIF_SUFFIX:
        raise VideditError(f"--preview {preview}: a preview is a GIF; give it a .gif name")
    check_output_path(preview, input_path, "--preview")
    if output is not None and _same_file(Path(preview), Path(output)):
        raise VideditError(f"--preview {preview} is the edit's own output (-o); choose another --preview path")


def write_output(
    path: str | os.PathLike, chunks: Chunks, info: ClipInfo, *, input_path: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write the edited frames where the suffix says: .mp4/.mov/.mkv/.webm video (with the
    input's audio for ``info.start_s..info.end_s``, at ``info.out_fps``), .gif (every frame at the
    source's size; above GIF's 50 fps every k-th frame), .png/.jpg single image, or a frame folder
    (no suffix, or an existing folder)."""
    path = Path(path)
    check_output_path(path, input_path)
    kind = _output_kind(path)
    if kind == "video":
        if info.out_fps is None:
            raise VideditError(f"{info.path} is a single image; write it to a .png/.jpg, not {path}")
        return write_video(
            path,
            chunks,
            info.out_fps,
            audio_from=Path(input_path) if info.has_audio else None,
            audio_start_s=info.start_s,
            audio_end_s=info.end_s,
            times=info.times,
        )
    if kind == "gif":
        return write_gif(path, chunks, float(info.out_fps or 1), max_side=max(info.source_size), max_fps=50,
                         max_frames=info.n_frames, **info.timing())
    if kind == "image":
        if info.n_frames != 1:
            raise VideditError(
                f"{path} holds one frame but the clip has {info.n_frames}; write a video, a .gif or a folder"
            )
        return write_image(path, np.concatenate(list(_chunks(chunks, str(path)))))
    return write_frames_dir(path, chunks, overwrite=overwrite)
