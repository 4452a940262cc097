"""Keyframes edited jointly with extended attention (TokenFlow, Geyer et al. 2023, Sec. 4.1).

Keyframes are at most ``every`` frames apart, spread evenly (``select="every"``), or where
the content changes (``select="change"``: frames whose mean absolute difference to the frame
before is above the ``quantile`` of the window's). The clip's first frame and each window's
last frame are keyframes, so every other frame lies between two. On the chosen self-attention
layers every frame attends to the keyframes of its window and to the window before's last
keyframe, concatenated; the keyframes run first in each step, together.

The frames between get the edit from the keyframes through the stages that build on this
module: ``tokenflow`` (attention outputs at nearest-neighbour tokens, during denoising; the
frames between then attend to themselves), ``keyframe_flow`` (latents warped along the
source's optical flow), and after decoding ``pixels_warp``, ``pixels_guided`` or
``pixels_bilateral``. The old spelling ``keyframes:propagation=...,pixels=...`` expands to
those modules (:meth:`Keyframes.expand`).

Memory does not grow with the clip: a window carries its last keyframe's keys and values at
every selected layer, step and model call to the next (none after the clip's last window;
``offload`` keeps them in CPU memory).
"""

from __future__ import annotations

import bisect
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from videdit.attention import choose_layers, patterns
from videdit.errors import VideditError
from videdit.video.cross_frame import AnchorStore, CrossFrameAttention
from videdit.video.flow import FlowConfig, Flows, compute_flows, compute_flows_ahead
from videdit.video.module import TemporalContext, TemporalModule, TemporalPlan, Window, register_temporal

NAME = "keyframes"
SELECT = ("every", "change")
# the old spelling's options -> the modules they now name (Keyframes.expand)
PROPAGATION = {"tokenflow": "tokenflow", "flow": "keyframe_flow"}
PIXELS = {"warp": "pixels_warp", "guided": "pixels_guided", "bilateral": "pixels_bilateral"}


@dataclass(frozen=True)
class KeyframesConfig:
    select: str = "every"                # every | change
    every: int = 4                       # keyframes at most `every` frames apart (each window ends on one)
    quantile: float = 0.8                # change: keyframes where the frame difference is above this quantile
    layers: str | tuple[str, ...] = "*attn1.processor"   # self-attention layers (globs)
    offload: bool = False                # keep the carried keyframe's tensors in CPU memory

    def __post_init__(self):
        if self.select not in SELECT:
            raise VideditError(f"{NAME} select must be one of {list(SELECT)}, got {self.select!r}")
        if not isinstance(self.every, int) or self.every < 1:
            raise VideditError(f"{NAME} every must be a whole number of frames >= 1, got {self.every!r}")
        if not 0 <= self.quantile <= 1:
            raise VideditError(f"{NAME} quantile must be in [0, 1], got {self.quantile}")
        patterns(NAME, "layers", self.layers)


# ---- choosing keyframes ----

def frame_changes(frames: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    """(F,) float: each frame's mean absolute difference to the frame before, uint8 frames
    (F, H, W, 3); the first is NaN unless ``previous`` (the frame before them) is given."""
    x = frames.astype(np.float32)
    before = np.concatenate([x[:1] if previous is None else previous[None].astype(np.float32), x[:-1]])
    d = np.abs(x - before).mean(axis=(1, 2, 3))
    if previous is None:
        d[0] = np.nan
    return d


def spread_keyframes(start: int, end: int, every: int, include_start: bool) -> list[int]:
    """Keyframes from clip frame ``start`` to ``end`` (both keyframes; ``start`` listed only
    when ``include_start``): as few as keep them at most ``every`` apart, spread evenly."""
    if end <= start:
        return [start] if include_start else []
    spans = -(-(end - start) // every)
    return [start + int(j * (end - start) / spans + 0.5) for j in range(0 if include_start else 1, spans + 1)]


def select_keyframes(n_frames: int, *, every: int, select: str = "every", frames: np.ndarray | None = None,
                     quantile: float = 0.8, offset: int = 0, previous: np.ndarray | None = None,
                     last_keyframe: int | None = None) -> list[int]:
    """Clip indices of the keyframes among clip frames ``offset`` .. ``offset + n_frames - 1``.

    The window's last frame is a keyframe, so that every other frame has a keyframe after it as
    well as one before (the earlier window's last keyframe, ``last_keyframe``, or the window's
    first frame). ``every``: evenly spread from the earlier keyframe to the window's last
    frame, at most ``every`` apart. ``change``: the clip's first frame, frames whose
    :func:`frame_changes` exceed the ``quantile`` of the window's, any frame ``every`` after
    the last keyframe (``previous``: the frame before the window, so that a cut at the border
    counts), and the window's last frame."""
    end = offset + n_frames - 1
    if n_frames < 1:
        return []
    if select == "every":
        if last_keyframe is None:
            return spread_keyframes(offset, end, every, include_start=True)
        return spread_keyframes(last_keyframe, end, every, include_start=False)
    if frames is None or len(frames) != n_frames:
        raise VideditError(f"{NAME} select='change' needs the window's {n_frames} source frames")
    d = frame_changes(frames, previous)
    valid = d[~np.isnan(d)]
    threshold = np.quantile(valid, quantile) if len(valid) else np.inf
    keys, last = [], last_keyframe
    for i, di in enumerate(d):
        g = offset + i
        if last is None or di > threshold or g - last >= every or g == end:
            keys.append(g)
            last = g
    return keys


def neighbours(frame: int, keyframes: Sequence[int]) -> tuple[tuple[int, float], ...]:
    """The nearest keyframes before and after ``frame`` (sorted ``keyframes``, clip indices)
    with linear weights by temporal distance; one with weight 1 where only one side has one."""
    i = bisect.bisect_left(keyframes, frame)
    before = keyframes[i - 1] if i > 0 else None
    after = keyframes[i] if i < len(keyframes) else None
    if before is None or after is None:
        only = after if before is None else before
        return () if only is None else ((only, 1.0),)
    span = after - before
    return (before, (after - frame) / span), (after, (frame - before) / span)


@dataclass(frozen=True)
class Layout:
    """A window's keyframes (clip indices): its own, the one carried from the window before,
    and both together (what extended attention spans)."""

    keys: tuple[int, ...]
    carried: int | None
    spans: tuple[int, ...]


class PairFlows:
    """The source flow of (frame, keyframe) pairs of one window, estimated once per pair and
    flow setting however many stages read it. Pairs named :meth:`ahead` (by a stage's plan,
    before the window is denoised) are estimated in the flow thread while the model works
    (:func:`~videdit.video.flow.compute_flows_ahead`), so that it does not wait for the flow; a
    pair asked for without that is estimated in the caller's thread (``inline`` counts them)."""

    def __init__(self, cache_dir, device=None):
        self.cache_dir, self.device = cache_dir, device   # device: a learned flow's (RAFT)
        self.flows: dict[tuple, Flows | Future] = {}
        self.inline = 0

    def ahead(self, config: FlowConfig, pairs: Sequence[tuple[int, int, np.ndarray, np.ndarray]]) -> None:
        """Start estimating each (g, a, source_g, source_a) pair not yet estimated or started."""
        for g, a, source_g, source_a in pairs:
            if (config, g, a) not in self.flows:
                self.flows[config, g, a] = compute_flows_ahead(np.stack([source_g, source_a]), config,
                                                               cache_dir=self.cache_dir, device=self.device)

    def __call__(self, config: FlowConfig, g: int, a: int, source_g: np.ndarray, source_a: np.ndarray) -> Flows:
        key = (config, g, a)
        if key not in self.flows:
            self.inline += 1
            self.flows[key] = compute_flows(np.stack([source_g, source_a]), config, cache_dir=self.cache_dir,
                                            device=self.device)
        flows = self.flows[key]
        if isinstance(flows, Future):   # started ahead: its error, if any, is raised here
            flows = self.flows[key] = flows.result()
        return flows


def between_pairs(window: Window, layout: Layout) -> list[tuple[int, int]]:
    """The (frame, keyframe) pairs whose flow the stages read: each frame of the window that is no
    keyframe, with its nearest keyframes (the carried one included)."""
    keys = set(layout.spans)
    return [(g, a) for g in window.indices if g not in keys for a, _ in neighbours(g, layout.spans)]


@register_temporal
class Keyframes(TemporalModule):
    """Keyframes edited jointly with extended attention (TokenFlow Sec. 4.1); the frames between attend to them."""

    name = NAME
    config_class = KeyframesConfig

    def __init__(self, config: KeyframesConfig):
        super().__init__(config)
        self.previous: np.ndarray | None = None   # the last source frame of the window before (select="change")
        self.last_keyframe: int | None = None     # the latest keyframe of the windows so far
        self.anchors: dict = {}                   # the carried keyframe's keys and values (AnchorStore)
        self.between_attend_self = False          # a stage replaces the frames between during denoising
        self._layout: tuple[int, Layout] | None = None   # (window start, layout) of the current window
        self.pair_flows: PairFlows | None = None          # the current window's (frame, keyframe) flows
        # a split clip's window groups (videdit.split): each window's keyframes as the first pass chose
        # them (window start -> Layout); the model edits only the frames between, each attending to itself
        self.frozen_layouts: dict[int, Layout] | None = None

    @classmethod
    def expand(cls, options: Mapping[str, Any]) -> list[tuple[str, dict]]:
        """The old spelling ``keyframes:propagation=P,pixels=X,flow={...},guided_radius=..`` ->
        this module, ``tokenflow`` or ``keyframe_flow``, and ``pixels_warp`` (``pixels=true``),
        ``pixels_guided`` or ``pixels_bilateral`` with their options (``guided_radius`` ->
        ``radius``, ``bilateral_cell`` -> ``cell``, ``flow`` to each stage that reads a flow)."""
        options = dict(options)
        propagation, pixels = options.pop("propagation", None), options.pop("pixels", False)
        flow = options.pop("flow", None)
        prefixed = {k: options.pop(k) for k in list(options) if k.startswith(("guided_", "bilateral_"))}
        pixels = "warp" if pixels is True else pixels or None
        if propagation not in (None, *PROPAGATION):
            raise VideditError(f"{NAME} propagation must be one of {sorted(PROPAGATION)}, got {propagation!r}")
        if pixels not in (None, *PIXELS):
            raise VideditError(f"{NAME} pixels must be one of false, true, 'warp', 'guided' or 'bilateral', "
                               f"got {pixels!r}")
        if pixels == "bilateral" and propagation is not None:
            raise VideditError(f"{NAME} pixels 'bilateral' makes every frame from the keyframes' colour maps, and only "
                               f"the keyframes are edited: no propagation applies; drop propagation {propagation!r}")
        stray = sorted(k for k in prefixed if not k.startswith(f"{pixels}_"))
        if stray:
            raise VideditError(f"{NAME} {', '.join(stray)} apply with pixels {stray[0].split('_')[0]!r} only")
        out: list[tuple[str, dict]] = [(NAME, options)]
        if propagation == "tokenflow":
            out.append(("tokenflow", {"scope": "window", "features": "keys",   # videdit's variant (tokenflow-plus)
                                      **{k: options[k] for k in ("layers", "offload") if k in options}}))
        elif propagation == "flow":
            out.append(("keyframe_flow", {}))
        if pixels is not None:
            out.append((PIXELS[pixels], {k.removeprefix(f"{pixels}_"): v for k, v in prefixed.items()}))
        if flow is not None:
            readers = [stage for name, stage in out if name in ("keyframe_flow", "pixels_warp", "pixels_guided")]
            if not readers:
                raise VideditError(f"{NAME} flow options apply to propagation 'flow' or pixels true, 'warp' or "
                                   f"'guided' only")
            for stage in readers:
                stage["flow"] = flow
        return out

    def bind(self, modules: Sequence[TemporalModule]) -> None:
        self.between_attend_self = any(m.propagates_attention for m in modules)

    def layout(self, window: Window) -> Layout:
        """This window's keyframes, from the state the windows before left (the same before and
        after this window's plan)."""
        if self.frozen_layouts is not None:
            return self.frozen_layouts[window.start]
        if self._layout is None or self._layout[0] != window.start:
            frames = window.frames if self.config.select == "change" else None
            keys = select_keyframes(window.size, every=self.config.every, select=self.config.select, frames=frames,
                                    quantile=self.config.quantile, offset=window.start, previous=self.previous,
                                    last_keyframe=self.last_keyframe)
            carried = self.last_keyframe
            spans = tuple(sorted({*keys, *(() if carried is None else (carried,))}))
            self._layout = window.start, Layout(tuple(keys), carried, spans)
            self.pair_flows = None
        return self._layout[1]

    def frames_to_edit(self, window: Window) -> list[int]:
        return [g - window.start for g in self.layout(window).keys]

    def flows(self, ctx: TemporalContext) -> PairFlows:
        """The current window's (frame, keyframe) flows, shared by the stages that read them."""
        if self.pair_flows is None:
            self.pair_flows = PairFlows(ctx.cache_dir, getattr(ctx.model, "device", None))
        return self.pair_flows

    def flows_ahead(self, ctx: TemporalContext, config: FlowConfig, window: Window,
                    carried: tuple[int, np.ndarray] | None) -> None:
        """Start estimating, in a thread, the flows under ``config`` of the window's frames between
        keyframes to their nearest keyframes (:func:`between_pairs`); ``carried``: the window
        before's last keyframe (clip index, source frame), where the stage has it."""
        source = {g: window.frames[g - window.start] for g in window.indices}
        if carried is not None:
            source[carried[0]] = carried[1]
        pairs = between_pairs(window, self.layout(window))
        self.flows(ctx).ahead(config, [(g, a, source[g], source[a]) for g, a in pairs if a in source])

    def plan(self, window: Window, ctx: TemporalContext) -> TemporalPlan:
        if self.config.select == "change":
            window.source(f"{NAME} select='change'")
        lay = self.layout(window)
        denoised = ctx.denoised(window)
        if self.frozen_layouts is not None:
            return self._between_plan(window, ctx, lay, denoised)
        if ctx.edited is not None and tuple(denoised) != lay.keys:
            raise VideditError(f"{NAME}: the model was given frames {denoised} of the clip to edit, and this window's "
                               f"keyframes are {list(lay.keys)}; edit the clip's windows in order with one "
                               f"TemporalStack")
        keyset, spans = set(lay.keys), lay.spans
        if self.between_attend_self:
            def attend(g): return spans if g in keyset else (g,)
        else:
            def attend(g): return spans
        layers = choose_layers(ctx.model.unet, patterns(NAME, "layers", self.config.layers), NAME, "layers",
                               cross=False)
        store = AnchorStore(denoised, attend, set(lay.keys[-1:]), self.anchors, self.config.offload, window.last)
        module = CrossFrameAttention(layers, attend, denoised, store, what=NAME, source_branch=ctx.source_branch)
        if lay.keys:
            self.last_keyframe = lay.keys[-1]
        if window.frames is not None:
            self.previous = window.frames[-1].copy()
        # keyframes run first, together (else a batch would attend to keyframes not run yet)
        lead = tuple(range(len(lay.keys))) if ctx.edited is not None else tuple(g - window.start for g in lay.keys)
        return TemporalPlan(modules=[module], lead_frames=lead)

    def _between_plan(self, window: Window, ctx: TemporalContext, lay: Layout, denoised: list[int]) -> TemporalPlan:
        """A split clip's window group: the frames between the keyframes alone, each attending to
        itself as in the one-worker run (a stage propagates the keyframes' outputs to them), in
        the batches they run in there (no lead frames: the keyframes ran in the first pass)."""
        between = [g for g in window.indices if g not in lay.keys]
        if not self.between_attend_self or denoised != between:
            raise VideditError(f"{NAME}: a window group edits the frames between keyframes {list(lay.keys)} with a "
                               f"stage that propagates the keyframes' attention (tokenflow scope window); got frames "
                               f"{denoised}")
        layers = choose_layers(ctx.model.unet, patterns(NAME, "layers", self.config.layers), NAME, "layers",
                               cross=False)

        def attend(g): return (g,)
        store = AnchorStore(denoised, attend, (), {}, self.config.offload, True)
        return TemporalPlan(modules=[CrossFrameAttention(layers, attend, denoised, store, what=NAME,
                                                         source_branch=ctx.source_branch)])
