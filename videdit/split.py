"""One long clip over several workers: a first pass, then groups of windows made in parallel.

Where the module that makes a clip's frames reads, in its second pass, only what the first pass
left (``TemporalModule.splits``: ``keyframes`` with ``pixels_bilateral``, whose second pass makes
every frame its own source under the clip's colour maps), the edit runs as resumable pieces:

1. :func:`first_pass` edits the clip's windows in order on one worker (the model inverts,
   denoises and decodes the keyframes; the keyframes' attention carries from window to window)
   and returns a :class:`ClipPass`: the frozen module (``TemporalModule.frozen``), the clip's
   read options and counts. It is small and picklable, for other workers.
2. :func:`group_frames` makes one group of consecutive windows (``ClipPass.groups``) from the
   source read again, on any worker, with no model: the second pass of
   :func:`videdit.pipeline.edit_video`, window by window, restricted to the group.
3. :func:`write_split` writes the groups' frames in order, atomically, as one output.

The frames are those of the one-worker run, bit for bit: the same windows edited the same way,
the same maps, the same source frames (read as the same chunks). Stacks that carry state from
window to window (sparse-causal attention, flow propagation, keyframes with TokenFlow) are
refused in one line naming the module (:meth:`videdit.video.TemporalStack.split_refusal`);
:mod:`videdit.batch` then runs such a job whole on one worker.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from videdit import io
from videdit.errors import VideditError
from videdit.video import TemporalModule, Window


@dataclass(frozen=True)
class ClipPass:
    """What the first pass of a split clip leaves for the workers that make its window groups."""

    input: str
    read: io.ReadOptions       # the clip's selection at the working size; chunk_size: the edit's window
    info: io.ClipInfo
    n_frames: int
    vae_scale_factor: int      # the model's (frames go to the size the model worked at)
    maker: TemporalModule      # the frozen module whose finish_clip makes each window's frames
    windows: int = 0           # EditStats of the first pass
    cache_hits: int = 0
    seconds: float = 0.0

    @property
    def n_windows(self) -> int:
        return -(-self.n_frames // self.read.chunk_size)

    def groups(self, n: int) -> list[range]:
        """At most ``n`` groups of consecutive whole windows, as even as the windows allow, as
        clip frame ranges."""
        if not isinstance(n, int) or n < 1:
            raise VideditError(f"split must be a whole number of window groups >= 1, got {n!r}")
        w, size = self.n_windows, self.read.chunk_size
        n = min(n, w)
        bounds = [round(k * w / n) for k in range(n + 1)]
        return [range(bounds[k] * size, min(bounds[k + 1] * size, self.n_frames)) for k in range(n)]


@dataclass(frozen=True)
class GroupFrames:
    """A window group's output frames (F, H, W, 3) uint8 at the source size, and its preview thumbnails."""

    frames: range
    output: np.ndarray
    thumbs_source: np.ndarray | None = None
    thumbs_edit: np.ndarray | None = None


def split_refusal(settings) -> str | None:
    """Why an edit with ``settings`` (:class:`videdit.pipeline.EditSettings`) cannot split its
    clip, in one line naming the module; None where it can."""
    return settings.temporal_stack().split_refusal()


def first_pass(input: str | Path, *, model, read: io.ReadOptions | None = None, window: int = 16,
               cache_dir: str | Path | None = None, use_cache: bool = True, max_tokens: int | None = None,
               control=None, on_progress: Callable[[str, int, int], None] | None = None,
               **edit: object) -> ClipPass:
    """Edit every window of the clip in order, as :func:`videdit.pipeline.edit_video` does, and
    return the frozen state its second pass reads (refused in one line where the temporal
    modules cannot split). ``edit``: edit_video's edit options (prompts, steps, editor,
    temporal, ...); ``model``: a loaded :class:`videdit.models.Model`."""
    from videdit.inversion import InversionCache
    from videdit.pipeline import (EditStats, _at_working_size, _control, _read_options, _resolve_model, _settings,
                                  edit_frames)

    settings = _settings(**edit)
    stack = settings.temporal_stack()
    why = stack.split_refusal()
    if why is not None:
        raise VideditError(why)
    read = _read_options(read, window)
    info = io.probe(Path(input), read)
    model = _resolve_model(model, None, None, settings, info.source_size, read.size, max_tokens)
    read, info, work = _at_working_size(model, read, info, max_tokens)
    control = _control(control, model, settings, read, info.n_frames)
    cache = InversionCache(cache_dir) if use_cache else None
    stats = EditStats(size=work)
    t0 = time.perf_counter()
    chunks = io.read_frames(input, read)
    following = next(chunks, None)
    while following is not None:
        chunk, following = following, next(chunks, None)   # read one ahead: is this the last window?
        edit_frames(model, chunk, settings, cache=cache, stats=stats, start=stats.frames, temporal=stack,
                    last=following is None, control=control)
        if on_progress is not None:
            on_progress("edit", stats.frames, info.n_frames)
    return ClipPass(input=str(input), read=read, info=info, n_frames=stats.frames,
                    vae_scale_factor=model.vae_scale_factor, maker=stack.frozen_maker(), windows=stats.windows,
                    cache_hits=stats.cache_hits, seconds=time.perf_counter() - t0)


def group_frames(clip: ClipPass, frames: range, *, preview: bool = False,
                 on_progress: Callable[[str, int, int], None] | None = None) -> GroupFrames:
    """The output frames of clip frames ``frames`` (whole windows, one of :meth:`ClipPass.groups`):
    each window's source, read again, through the frozen module's ``finish_clip``, at the
    source size, as :func:`videdit.pipeline.edit_video`'s second pass makes them."""
    from videdit.pipeline import _resize, _thumb, model_size

    size = clip.read.chunk_size
    if frames.start % size or not (frames.stop % size == 0 or frames.stop == clip.n_frames):
        raise VideditError(f"a window group must be whole windows of {size} frames, got frames "
                           f"{frames.start}..{frames.stop - 1}")
    selection = dataclasses.replace(clip.info, indices=clip.info.indices[frames.start:frames.stop])
    out, src_thumbs, edit_thumbs, start = [], [], [], frames.start
    for chunk in io.read_selected(clip.input, clip.read, selection):
        height, width = chunk.shape[1:3]
        at_model = _resize(chunk, model_size(width, height, clip.vae_scale_factor))
        window = Window(start, len(chunk), at_model, last=start + len(chunk) >= clip.n_frames)
        edited = _resize(clip.maker.finish_clip(window), clip.info.source_size)
        out.append(edited)
        if preview:
            src_thumbs.append(_thumb(_resize(chunk, clip.info.source_size)))
            edit_thumbs.append(_thumb(edited))
        start += len(chunk)
        if on_progress is not None:
            on_progress("second pass", start - frames.start, len(frames))
    if start != frames.stop:
        raise VideditError(f"{clip.input} gave {start - frames.start} frames for frames {frames.start}.."
                           f"{frames.stop - 1} on its second read; the output would not match the edit "
                           f"(is the file being written to?)")
    if not preview:
        return GroupFrames(frames, np.concatenate(out))
    return GroupFrames(frames, np.concatenate(out), np.concatenate(src_thumbs), np.concatenate(edit_thumbs))


def write_split(output: str | Path, clip: ClipPass, groups: Iterable[GroupFrames], *, preview: str | Path | None = None,
                overwrite: bool = False) -> Path:
    """The groups' frames, in order and covering the clip, written atomically as one output (and the
    source|edit preview GIF)."""
    thumbs: list[tuple[np.ndarray, np.ndarray]] = []

    def chunks():
        at = 0
        for g in groups:
            if g.frames.start != at:
                raise VideditError(f"window groups out of order: frames {g.frames.start}.. came after {at}")
            if preview is not None:
                if g.thumbs_source is None:
                    raise VideditError("a preview needs the groups' thumbnails; make them with preview=True")
                thumbs.append((g.thumbs_source, g.thumbs_edit))
            yield g.output
            at = g.frames.stop
        if at != clip.n_frames:
            raise VideditError(f"the window groups cover {at} of the clip's {clip.n_frames} frames")

    path = io.write_output(output, chunks(), clip.info, input_path=clip.input, overwrite=overwrite)
    if preview is not None:
        io.write_gif(preview, np.concatenate([e for _, e in thumbs]), float(clip.info.out_fps or 8),
                     source=np.concatenate([s for s, _ in thumbs]))
    return path


def edit_split(input: str | Path, output: str | Path, *, model, groups: int, preview: str | Path | None = None,
               overwrite: bool = False, **options) -> tuple[ClipPass, Path]:
    """The three pieces on this process, one group after another: what a one-worker run gives,
    through the split path (``options``: :func:`first_pass`'s)."""
    clip = first_pass(input, model=model, **options)
    made = (group_frames(clip, g, preview=preview is not None) for g in clip.groups(groups))
    return clip, write_split(output, clip, made, preview=preview, overwrite=overwrite)

