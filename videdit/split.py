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

Keyframes with TokenFlow propagation in windows (``TemporalStack.keyframe_split``: ``keyframes``
+ ``tokenflow`` scope window, configs/tokenflow-plus.yaml) split after a keyframe pass: the
frames between keyframes read only the keyframes' attention outputs and source features, and
attend to themselves. :func:`first_pass` inverts each window whole and edits its keyframes
alone (the one-worker run's lead batch; their attention carried to the next window), freezing
those tensors and the keyframes' latents (:class:`videdit.video.tokenflow.KeyframeFreeze`, its
size :func:`videdit.video.tokenflow.freeze_bytes`); :func:`group_frames` then edits each
window's frames between on a model, in the batches one worker runs them in, and decodes the
window whole. The official TokenFlow (scope clip: random pivots over the whole clip at every
step) runs on one worker.

The frames are those of the one-worker run, bit for bit on CPU: the same windows edited the
same way, the same maps, the same source frames (read as the same chunks), the same UNet batches.
Stacks that carry state from window to window (sparse-causal attention, flow propagation) are
refused in one line naming the module (:func:`split_refusal`); :mod:`videdit.batch` then runs
such a job whole on one worker.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from videdit import io
from videdit.errors import VideditError
from videdit.video import TemporalModule, Window


KEYFRAME_SPLIT_CONTROL = "a keyframe split (tokenflow) with ControlNets is not made yet; the clip runs on one worker"


@dataclass(frozen=True)
class ClipPass:
    """What the first pass of a split clip leaves for the workers that make its window groups."""

    input: str
    read: io.ReadOptions       # the clip's selection at the working size; chunk_size: the edit's window
    info: io.ClipInfo
    n_frames: int
    vae_scale_factor: int      # the model's (frames go to the size the model worked at)
    maker: TemporalModule | None   # the frozen module whose finish_clip makes each window's frames
    windows: int = 0           # EditStats of the first pass
    cache_hits: int = 0
    seconds: float = 0.0
    # a keyframe split (TemporalStack.keyframe_split): the edit's settings and the keyframes' frozen
    # state; each group's worker edits the frames between on its model (group_frames(model=...))
    settings: object = None                    # videdit.pipeline.EditSettings
    keyframes: object = None                   # videdit.video.tokenflow.KeyframeFreeze
    cache_dir: str | None = None               # the first pass's inversion cache (None: none)

    @property
    def needs_model(self) -> bool:
        """Whether the groups are edited by a model (a keyframe split) rather than made from frozen maps."""
        return self.keyframes is not None

    @property
    def n_windows(self) -> int:
        return -(-self.n_frames // self.read.chunk_size)

    def part(self, frames: range) -> ClipPass:
        """What the group of clip frames ``frames`` reads: for a keyframe split, the freeze of the
        keyframes its windows span (their own and the one carried into its first) only, so each
        worker is sent its share; else the whole (small) pass."""
        if self.keyframes is None:
            return self
        freeze = self.keyframes
        layouts = {s: lay for s, lay in freeze.layouts.items() if s in frames}
        spans = {g for lay in layouts.values() for g in lay.spans}
        return dataclasses.replace(self, keyframes=dataclasses.replace(
            freeze, layouts=layouts, outputs={g: v for g, v in freeze.outputs.items() if g in spans},
            latents={g: v for g, v in freeze.latents.items() if g in spans}))

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
    stack = settings.temporal_stack()
    why = stack.split_refusal()
    if why is None and stack.keyframe_split and settings.token_merging_config is not None:
        return ("token merging draws its merges per UNet call, and a keyframe split makes other calls than one "
                "worker; the clip runs on one worker")
    return why


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
    why = split_refusal(settings)
    if why is not None:
        raise VideditError(why)
    if stack.keyframe_split and control is not None:
        raise VideditError(KEYFRAME_SPLIT_CONTROL)
    read = _read_options(read, window)
    info = io.probe(Path(input), read)
    model = _resolve_model(model, None, None, settings, info.source_size, read.size, max_tokens)
    read, info, work = _at_working_size(model, read, info, max_tokens)
    control = _control(control, model, settings, read, info.n_frames)
    cache = InversionCache(cache_dir) if use_cache else None
    stats = EditStats(size=work)
    t0 = time.perf_counter()
    if stack.keyframe_split:
        freeze = _keyframe_pass(input, model, read, info, settings, stack, cache, stats, on_progress)
        return ClipPass(input=str(input), read=read, info=info, n_frames=stats.frames,
                        vae_scale_factor=model.vae_scale_factor, maker=None, windows=stats.windows,
                        cache_hits=stats.cache_hits, seconds=time.perf_counter() - t0, settings=settings,
                        keyframes=freeze, cache_dir=str(cache.directory) if cache is not None else None)
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


def _keyframe_pass(input, model, read: io.ReadOptions, info: io.ClipInfo, settings, stack, cache, stats,
                   on_progress) -> object:
    """A keyframe split's first pass: each window, in order, inverted whole (as one worker does,
    through the cache, so the groups find it) and its keyframes alone denoised (their batch is
    the one-worker run's lead batch; their attention carried to the next window), recording what
    the frames between read -> :class:`videdit.video.tokenflow.KeyframeFreeze`."""
    from videdit.pipeline import Stopwatch, _at_model_size, edit_latents, invert_frames
    from videdit.video.keyframes import Keyframes
    from videdit.video.tokenflow import KeyframeFreeze, TokenFlow

    keyframes = next(m for m in stack.modules if isinstance(m, Keyframes))
    tokenflow = next(m for m in stack.modules if isinstance(m, TokenFlow))
    tokenflow.recording = True
    layouts, outputs, latents = {}, {}, {}
    chunks = io.read_frames(input, read)
    following = next(chunks, None)
    while following is not None:
        chunk, following = following, next(chunks, None)
        start = stats.frames
        window = Window(start, len(chunk), _at_model_size(model, chunk), last=following is None)
        lay = keyframes.layout(window)
        keys = tuple(g - start for g in lay.keys)
        watch = Stopwatch(model)
        inv = invert_frames(model, window.frames, settings, cache=cache)
        watch.lap(stats, "invert")
        z = edit_latents(model, inv.select(keys), settings, frame_size=chunk.shape[1:3], window=window,
                         temporal=stack, cache=cache, edited=keys)
        layouts[start] = lay
        outputs.update(tokenflow.take_recorded(lay.keys))
        latents.update({g: z[i].to("cpu", copy=True) for i, g in enumerate(lay.keys)})
        watch.lap(stats, "edit")
        stats.frames += len(chunk)
        stats.windows += 1
        stats.cache_hits += int(inv.cached)
        if on_progress is not None:
            on_progress("keyframes", stats.frames, info.n_frames)
    return KeyframeFreeze(layouts=layouts, outputs=outputs, latents=latents, source_branch=tokenflow._source)


def _between(clip: ClipPass, model, chunk: np.ndarray, start: int, cache) -> np.ndarray:
    """A keyframe split's window at clip frame ``start``: the frames between its keyframes edited
    on ``model`` (in the batches they run in on one worker, the keyframes' attention outputs read
    from the freeze), the keyframes' latents from the first pass, all decoded together as one
    worker decodes the window -> its frames at the chunk's size (:func:`videdit.pipeline.edit_frames`)."""
    from videdit.pipeline import _at_model_size, _resize, edit_latents, invert_frames
    from videdit.video import WindowLatents
    from videdit.video.keyframes import Keyframes
    from videdit.video.tokenflow import TokenFlow

    settings, freeze = clip.settings, clip.keyframes
    stack = settings.temporal_stack()
    for m in stack.modules:
        if isinstance(m, Keyframes):
            m.frozen_layouts = freeze.layouts
        elif isinstance(m, TokenFlow):
            m.frozen = freeze
    height, width = chunk.shape[1:3]
    window = Window(start, len(chunk), _at_model_size(model, chunk), last=start + len(chunk) >= clip.n_frames)
    lay = freeze.layouts[start]
    keys = [g - start for g in lay.keys]
    between = tuple(i for i in range(len(chunk)) if i + start not in lay.keys)
    inv = invert_frames(model, window.frames, settings, cache=cache)
    made = torch.stack([freeze.latents[g] for g in lay.keys]).to(model.device)
    z = made.new_empty((len(chunk), *made.shape[1:]))
    z[keys] = made
    if between:
        z[list(between)] = edit_latents(model, inv.select(between), settings, frame_size=(height, width), window=window,
                                        temporal=stack, cache=cache, edited=between).to(z)
    out = stack.finish_window(window, model.decode_latents(z, settings.batch_size),
                              WindowLatents(edited=tuple(range(len(chunk))), source=inv.source, result=z))
    return _resize(out, (width, height))


def group_frames(clip: ClipPass, frames: range, *, model=None, cache_dir: str | Path | None = None,
                 use_cache: bool = True, preview: bool = False,
                 on_progress: Callable[[str, int, int], None] | None = None) -> GroupFrames:
    """The output frames of clip frames ``frames`` (whole windows, one of :meth:`ClipPass.groups`):
    each window's source, read again, through the frozen module's ``finish_clip``, at the
    source size, as :func:`videdit.pipeline.edit_video`'s second pass makes them. A keyframe
    split (``clip.needs_model``) edits each window's frames between keyframes on ``model`` (a
    loaded :class:`videdit.models.Model`, the first pass's), through the inversion cache at
    ``cache_dir`` (None: the first pass's; ``use_cache`` False: none)."""
    from videdit.inversion import InversionCache
    from videdit.pipeline import _resize, _thumb, model_size

    cache = None
    if clip.needs_model:
        if model is None:
            raise VideditError("this clip's window groups are edited by the model (a keyframe split, tokenflow); "
                               "pass group_frames(model=...)")
        where = cache_dir if cache_dir is not None else clip.cache_dir
        cache = InversionCache(where) if use_cache and where is not None else None

    size = clip.read.chunk_size
    if frames.start % size or not (frames.stop % size == 0 or frames.stop == clip.n_frames):
        raise VideditError(f"a window group must be whole windows of {size} frames, got frames "
                           f"{frames.start}..{frames.stop - 1}")
    selection = dataclasses.replace(clip.info, indices=clip.info.indices[frames.start:frames.stop])
    out, src_thumbs, edit_thumbs, start = [], [], [], frames.start
    for chunk in io.read_selected(clip.input, clip.read, selection):
        height, width = chunk.shape[1:3]
        if clip.needs_model:
            edited = _resize(_between(clip, model, chunk, start, cache), clip.info.source_size)
        else:
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
                     source=np.concatenate([s for s, _ in thumbs]), **clip.info.timing())
    return path


def edit_split(input: str | Path, output: str | Path, *, model, groups: int, preview: str | Path | None = None,
               overwrite: bool = False, **options) -> tuple[ClipPass, Path]:
    """The three pieces on this process, one group after another: what a one-worker run gives,
    through the split path (``options``: :func:`first_pass`'s)."""
    clip = first_pass(input, model=model, **options)
    made = (group_frames(clip, g, model=model, use_cache=options.get("use_cache", True), preview=preview is not None)
            for g in clip.groups(groups))
    return clip, write_split(output, clip, made, preview=preview, overwrite=overwrite)

