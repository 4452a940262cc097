"""Temporal consistency of an edited clip, measured along the *source* clip's optical flow.

Flow warp error (the warping error of Lai et al. 2018, "Learning Blind Video Temporal
Consistency", with L1 instead of L2): frame t+1 of the edit is warped back onto frame t along
the source's forward flow t -> t+1 and compared with the edit's frame t, over the pixels the
flow check finds visible in both frames; mean absolute difference over those pixels and the
RGB channels, in [0, 255]. The source's own warp error (the same measure on the source) is the
floor that flow errors and resampling leave; the ratio edit / source is 1 for an edit that
moves exactly like its source.

Flicker: the change of each frame's mean brightness (Rec. 601 luma) from one frame to the
next, compared with the source's: mean over t of |dY_edit(t) - dY_source(t)| in [0, 255].
It sees global brightness pulsing, which the warp error (per pixel, dominated by texture)
dilutes; without a source it is the mean |dY_edit(t)|.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from videdit import io
from videdit.errors import VideditError
from videdit.video.flow import FlowConfig, Flows, compute_flows
from videdit.video.warp import warp

_LUMA = np.array([0.299, 0.587, 0.114])


def _check(frames: np.ndarray, what: str) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise VideditError(f"{what} must be uint8 RGB frames (T, H, W, 3), got {frames.dtype} {frames.shape}")


def mean_luma(frames: np.ndarray) -> np.ndarray:
    """Each frame's mean brightness (Rec. 601 luma) -> (T,)."""
    return frames.reshape(len(frames), -1, 3).mean(1) @ _LUMA


def warp_errors(frames: np.ndarray, flows: Flows) -> np.ndarray:
    """Per pair (T-1,): mean |frames[t] - warp(frames[t+1], forward[t])| over the pixels not
    occluded in ``flows`` (the source's), in [0, 255]; NaN for a pair with no such pixel."""
    _check(frames, "frames")
    if len(flows) != len(frames) - 1 or flows.forward.shape[1:3] != frames.shape[1:3]:
        raise VideditError(f"flow of {len(flows) + 1} frames of {flows.forward.shape[2]}x{flows.forward.shape[1]} "
                           f"does not fit {len(frames)} frames of {frames.shape[2]}x{frames.shape[1]}")
    back = warp(frames[1:].astype(np.float32), flows.forward)                 # (T-1, H, W, 3)
    diff = np.abs(back - frames[:-1].astype(np.float32)).mean(-1)              # (T-1, H, W)
    visible = ~flows.occlusion
    n = visible.sum((1, 2))
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, (diff * visible).sum((1, 2)) / np.maximum(n, 1), np.nan)


def warp_error(frames: np.ndarray, flows: Flows) -> float:
    """Flow warp error of ``frames`` along the source's ``flows``: mean over all visible
    pixels of all pairs, in [0, 255]."""
    _check(frames, "frames")
    errs, n = warp_errors(frames, flows), (~flows.occlusion).sum((1, 2))
    if n.sum() == 0:
        raise VideditError("no pixel is visible in consecutive frames; the warp error is undefined")
    return float(np.nansum(errs * n) / n.sum())


def flicker(frames: np.ndarray, source: np.ndarray | None = None) -> float:
    """Mean |dY_edit(t) - dY_source(t)| of per-frame mean luma changes, in [0, 255]."""
    _check(frames, "frames")
    if len(frames) < 2:
        raise VideditError("flicker needs at least 2 frames")
    d = np.diff(mean_luma(frames))
    if source is not None:
        _check(source, "source")
        if len(source) != len(frames):
            raise VideditError(f"the source has {len(source)} frames but the edit has {len(frames)}")
        d = d - np.diff(mean_luma(source))
    return float(np.abs(d).mean())


class TemporalMeter:
    """The report of :func:`temporal_report` accumulated over a clip's chunks, so memory holds
    one chunk: each ``update`` takes the next frames of the source and of the edit, and the
    pair across the chunk border is measured with the previous chunk's last frames."""

    def __init__(self, config: FlowConfig = FlowConfig(), *, cache_dir=None):
        self.config, self.cache_dir = config, cache_dir
        self.frames, self.visible, self.pixels = 0, 0, 0
        self.edit_sum = self.source_sum = 0.0
        self.luma_edit: list[float] = []     # one number per frame
        self.luma_source: list[float] = []
        self._last: tuple[np.ndarray, np.ndarray] | None = None
        self.size: tuple[int, int] | None = None

    def update(self, source: np.ndarray, edited: np.ndarray) -> None:
        _check(source, "source")
        _check(edited, "edited")
        if source.shape != edited.shape:
            raise VideditError(f"the source is {source.shape} but the edit is {edited.shape}; "
                               "compare clips of the same frames and size")
        self.size = self.size or (int(source.shape[2]), int(source.shape[1]))
        self.frames += len(source)
        self.luma_source += list(mean_luma(source))
        self.luma_edit += list(mean_luma(edited))
        if self._last is not None:
            source, edited = np.concatenate([self._last[0], source]), np.concatenate([self._last[1], edited])
        self._last = source[-1:].copy(), edited[-1:].copy()
        if len(source) < 2:
            return
        flows = compute_flows(source, self.config, cache_dir=self.cache_dir)
        n = (~flows.occlusion).sum((1, 2))
        self.edit_sum += float(np.nansum(warp_errors(edited, flows) * n))
        self.source_sum += float(np.nansum(warp_errors(source, flows) * n))
        self.visible += int(n.sum())
        self.pixels += int(flows.occlusion.size)

    def report(self) -> dict:
        """Warp errors (edit, source), their ratio, flicker, as a JSON-ready dict."""
        if self.frames < 2:
            raise VideditError(f"temporal scores need a clip of at least 2 frames, got {self.frames}")
        if self.visible == 0:
            raise VideditError("no pixel is visible in consecutive frames; the warp error is undefined")
        edit_err, source_err = self.edit_sum / self.visible, self.source_sum / self.visible
        d = np.diff(np.asarray(self.luma_edit)) - np.diff(np.asarray(self.luma_source))
        return {"frames": self.frames, "size": list(self.size),
                "warp_error": edit_err, "source_warp_error": source_err,
                "warp_error_ratio": edit_err / source_err if source_err > 0 else float("inf"),
                "flicker": float(np.abs(d).mean()), "visible_fraction": self.visible / self.pixels,
                "flow": asdict(self.config)}


def temporal_report(source: np.ndarray, edited: np.ndarray, config: FlowConfig = FlowConfig()) -> dict:
    """Warp error of the edit and of the source along the source's flow, their ratio and the
    flicker, as a JSON-ready dict. Both clips (T >= 2, H, W, 3) uint8 of one size."""
    meter = TemporalMeter(config)
    meter.update(source, edited)
    return meter.report()


def evaluate_clips(original: str | Path, edited: str | Path, *, read: io.ReadOptions | None = None,
                   config: FlowConfig = FlowConfig(), cache_dir: str | Path | None = None) -> dict:
    """:func:`temporal_report` of two clips on disk (video, frame folder), read chunk by chunk:
    ``read`` selects the frames of ``original`` (as the edit read them); ``edited`` is read
    whole and resized to their size. The two must have as many frames."""
    read = read or io.ReadOptions()
    info = io.probe(original, read)
    other = io.ReadOptions(size=info.size, chunk_size=read.chunk_size)
    n_edit = io.probe(edited, other).n_frames
    if n_edit != info.n_frames:
        raise VideditError(f"{original} gives {info.n_frames} frames (as read) but {edited} has {n_edit}; "
                           "select the edited range of the original (--start-frame, --end-frame, --stride ...)")
    meter = TemporalMeter(config, cache_dir=cache_dir)
    for a, b in zip(io.read_frames(original, read), io.read_frames(edited, other)):
        meter.update(a, b)
    out = meter.report()
    out.update(original=str(original), edited=str(edited))
    return out
