"""Keyframes and the frames between: edit a few keyframes jointly, carry the edit to the rest.

Keyframes (:func:`select_keyframes`): at most ``every`` frames apart, spread evenly, or
(``select="change"``) where the content changes: frames whose mean absolute difference to the
previous frame is above the ``quantile`` of the window's differences, at most ``every`` frames
apart. The clip's first frame and each window's last frame always are keyframes, so every
other frame lies between two. They run first in each step, together (in as few UNet batches
as ``batch_size`` allows), and attend to each other (TokenFlow's extended attention, Geyer et
al. 2023, Sec. 4.1; see :mod:`videdit.video.cross_frame`, mode ``keyframes``). The other frames get the edit by

- ``propagation="tokenflow"`` (Geyer et al. 2023, Sec. 4.2): during denoising, on the
  chosen self-attention layers, a frame's attention output becomes the keyframes' outputs at
  its tokens' nearest neighbours among theirs, the two nearest keyframes (before and after)
  blended linearly by temporal distance (TokenFlow squashes the weights with a sigmoid; the
  linear blend reaches each keyframe exactly). Neighbours are found by cosine similarity of
  the *source* branch's features at the same layer and step: the keys of its conditional half
  (a linear map of the block's normalised hidden states, which TokenFlow compares). The source
  branch itself is left alone, so the correspondences stay the source's. This needs an
  editor that replays the source beside the edit (one with a source branch, listed in
  ``SOURCE_BRANCH_EDITORS``); with the plain editor it is an error. A source pass of our own
  from the inversion's trajectory would be one more branch of UNet work per frame and step
  (+100% over the plain editor), and it must run inside the same UNet call as the edit,
  layer by layer; an editor with a source branch already computes exactly these features
  (for exact inversions its source branch replays the trajectory), so we require one.
- ``propagation="flow"``: the frames are denoised with their attention on the keyframes
  (cross-frame attention), and at each step each is replaced, on the latent grid, by the two
  nearest keyframes' latents warped onto it along optical flow of the *source* frames
  (:func:`videdit.video.flow.compute_flows`, brought to the latents' resolution by
  :func:`videdit.video.warp.downsample_flow` and ``downsample_mask``), blended by temporal
  distance where the keyframe sees the cell (forward-backward occlusion check; the fraction
  of the cell's pixels it sees) and keeping the frame's own latent where neither does. On
  every step before the last (chosen by the warp error of tools/temporal_table.py on
  tiny-random's wolf and dog, against fusing from later steps on) this fuses the predicted clean
  latent x0 and re-noises it with the step's noise, as :mod:`videdit.video.propagation` does
  with ``target="x0"``; after the last step, the final latents. No VAE round trip: decoding,
  warping pixels and re-encoding is far from identity for a VAE that is not a good
  autoencoder (tiny-random's: warp error above independent editing) and blurs with any.
  Cost: the flow of each (frame, keyframe) pair, once per window, and a latent warp per pair
  and step.

``pixels=True`` (with either propagation) adds Rerender-A-Video's last stage (Yang et al.
2023, Sec. 4.3, which propagates edited keyframes to the other frames with Ebsynth's
patch-based synthesis; here by warping along the same flow): after decoding, each
non-keyframe's pixels become its two nearest edited keyframes' pixels warped onto it along the
source frames' flow, blended by temporal distance where the keyframe sees the pixel, with the
frame's own decoded edit kept where neither does. Every frame between two keyframes then moves
exactly as the source does, wherever the flow is right; what the keyframes disagree on fades
across the span instead of flickering.

``pixels="guided"`` carries, instead of the keyframes' pixels, their local colour transforms
(the colour guided filter's coefficients, :mod:`videdit.video.guided`, fitted from each
keyframe's source to its edit), warped and blended the same way, and applies them to each
frame's *own* source pixels; keyframes too become their source under their own transform.
Outlines then are each frame's own, not a keyframe's moved by a flow that is least right at
motion boundaries. For appearance edits (colour, tone, material) only: a changed shape comes
out as a recolouring of the source's. On the toy clips' colour edits
(``tools/toy_video_table.py``) it halves the warp error of ``pixels=True``.

``pixels="bilateral"`` moves nothing along the flow: one grid of affine colour maps over
(y, x, luma) (:mod:`videdit.video.bilateral`, after Chen et al. 2016's bilateral guided
upsampling) is fitted from all of the clip's keyframes at once, their source to their decoded
edit, and every frame becomes its own source under it. A surface's colour then depends on its
source colour and (in cells of ``bilateral_cell`` of the shorter side) on where it is, not on
the frame, so it neither drifts between keyframes nor carries a flow's mistakes; keyframes
that disagree (one edited half-way) are averaged. Only the keyframes are inverted, denoised
and decoded (``edited_frames``, :mod:`videdit.video.registry`): they attend only to each
other, so their edit is the same as when every frame runs (to a level of rounding, for an
inversion that inverts frames independently, ``independent_frames``), and no other frame's
edit is used (so no ``propagation`` is set). With keyframes every 4 frames and windows of 16
that is about a quarter of the UNet, VAE and inversion work, unless another temporal module
of the edit needs every frame. A cached inversion of the whole window (an earlier edit's, or
``videdit invert``'s) serves the keyframes too, where the method inverts frames independently
(ddim, npi, proxedit, direct, edict, bdia, ddpm with its default shared noise); the others
invert the keyframes again. ``edit_video`` makes the frames in a second pass over the source
once every window is edited (``bilateral_scope="clip"``, the default).
``bilateral_scope="window"`` makes each window at once from its keyframes and the earlier
windows' (at ``bilateral_memory`` times their weight), the maps going linearly across the
window from the earlier window's to its own, for a clip whose look changes along it; it is
less steady (toy clips of seeds 1, 5, 3: 1.0x, 1.1x and 1.5x the source's warp error, against
0.8x, 0.9x and 0.8x with one grid for the clip). The default
cell, 1, is as large as the frame's shorter side: one map per luma band for a square frame,
varying a little across a wide one. It is the steadiest (the toy occlusion clips 0.8x and
0.6x, against 1.5x and 0.7x with cells of half the side, which also left two frames
unedited), but an edit that treats two regions of one colour differently needs smaller cells
(e.g. 0.25). Same scope as ``guided``: appearance edits.

Windows share keyframes: each window keeps its last keyframe in the clip's state (its keys
and values, attention outputs and source keys at every layer, step and call, except in the
clip's last window; for ``flow`` its source frame and its fused latent at each step), and
the next window's keyframes attend to it and its first frames take it as their earlier
keyframe. Memory does not grow with the clip: one window plus one carried keyframe (see
:mod:`videdit.video.cross_frame` for the bytes per frame).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Collection, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from videdit.attention import AttentionModule
from videdit.core.ddim import predict_x0_eps
from videdit.core.loop import StepCallback, StepContext
from videdit.editing.control import choose_layers, patterns
from videdit.errors import VideditError
from videdit.inversion.registry import make_config
from videdit.video.cross_frame import (AnchorStore, CrossFrameAttention, gather_anchors, keyframe_anchors,
                                       window_keyframes)
from videdit.video import bilateral, guided
from videdit.video.flow import FlowConfig, compute_flows
from videdit.video.registry import CLIP_FINISH, TemporalContext, TemporalPlan, register_temporal
from videdit.video.propagation import clean_latent, latent_factor, renoise
from videdit.video.warp import downsample_flow, downsample_mask, warp

NAME = "keyframes"
SELECT = ("every", "change")
PROPAGATION = ("tokenflow", "flow")
PIXELS = (False, True, "warp", "guided", "bilateral")
BILATERAL_SCOPES = ("clip", "window")
FLOW_PIXELS = (True, "warp", "guided")   # the pixel stages that move things along the flow
# Editors whose plan replays the source beside the edit (tests/video/test_keyframes.py checks this list).
SOURCE_BRANCH_EDITORS = ("cross_image", "masactrl", "plug_and_play", "prompt_to_prompt")


@dataclass(frozen=True)
class KeyframesConfig:
    select: str = "every"                # every | change
    every: int = 4                       # keyframes at most `every` frames apart (each window ends on one)
    quantile: float = 0.8                # change: keyframes where the frame difference is above this quantile
    propagation: str | None = None       # tokenflow (None: the default) | flow; none with pixels="bilateral"
    layers: str | tuple[str, ...] = "*attn1.processor"   # self-attention layers (globs) for both
    flow: Mapping[str, Any] | None = None   # flow: options of videdit.video.flow.FlowConfig
    offload: bool = False                # keep the carried keyframe's tensors in CPU memory
    pixels: bool | str = False           # after decoding: False, "warp" (True), "guided" or "bilateral" (module doc)
    guided_radius: int = 0               # pixels="guided": window radius in pixels (0: 1/8 of the shorter side)
    guided_eps: float = 1e-3             # pixels="guided": regularisation (colours in [0, 1])
    bilateral_cell: float = 1.0          # pixels="bilateral": grid cell, a fraction of the shorter side
    bilateral_bins: int = 4              # pixels="bilateral": luma cells
    bilateral_scope: str = "clip"        # pixels="bilateral": one grid for the clip, or one a window (module doc)
    bilateral_memory: float = 1.0        # bilateral_scope="window": weight of the earlier windows' keyframes (0: none)

    @property
    def propagates(self) -> str | None:
        """How the frames between keyframes get the edit: 'tokenflow' (the default) or 'flow';
        None with pixels='bilateral', which edits the keyframes alone."""
        if self.pixels == "bilateral":
            return None
        return self.propagation or PROPAGATION[0]

    @property
    def frames_from_source(self) -> bool:
        """Whether every output frame is its source frame under colour maps (pixels='bilateral'),
        so that keep_background has nothing to put back (EditSettings checks)."""
        return self.pixels == "bilateral"

    def __post_init__(self):
        if self.select not in SELECT:
            raise VideditError(f"{NAME} select must be one of {list(SELECT)}, got {self.select!r}")
        if self.pixels == "bilateral" and self.propagation is not None:
            raise VideditError(f"{NAME} pixels 'bilateral' makes every frame from the keyframes' colour maps, and only "
                               f"the keyframes are edited: no propagation applies; drop propagation "
                               f"{self.propagation!r}")
        if self.propagation not in (*PROPAGATION, None):
            raise VideditError(f"{NAME} propagation must be one of {list(PROPAGATION)}, got {self.propagation!r}")
        if not isinstance(self.every, int) or self.every < 1:
            raise VideditError(f"{NAME} every must be a whole number of frames >= 1, got {self.every!r}")
        if not 0 <= self.quantile <= 1:
            raise VideditError(f"{NAME} quantile must be in [0, 1], got {self.quantile}")
        patterns(NAME, "layers", self.layers)
        if self.pixels not in PIXELS:
            raise VideditError(f"{NAME} pixels must be one of false, true, 'warp', 'guided' or 'bilateral', "
                               f"got {self.pixels!r}")
        if not isinstance(self.guided_radius, int) or self.guided_radius < 0:
            raise VideditError(f"{NAME} guided_radius must be a whole number of pixels >= 0 (0: auto), "
                               f"got {self.guided_radius!r}")
        if not 0 < self.guided_eps <= 1:
            raise VideditError(f"{NAME} guided_eps must be in (0, 1], got {self.guided_eps}")
        if not 0 < self.bilateral_cell <= 1:
            raise VideditError(f"{NAME} bilateral_cell must be a fraction of the frame's shorter side in (0, 1], "
                               f"got {self.bilateral_cell}")
        if not isinstance(self.bilateral_bins, int) or not 1 <= self.bilateral_bins <= 64:
            raise VideditError(f"{NAME} bilateral_bins must be a whole number in [1, 64], got {self.bilateral_bins!r}")
        if self.bilateral_scope not in BILATERAL_SCOPES:
            raise VideditError(f"{NAME} bilateral_scope must be one of {list(BILATERAL_SCOPES)}, "
                               f"got {self.bilateral_scope!r}")
        if not 0 <= self.bilateral_memory <= 1:
            raise VideditError(f"{NAME} bilateral_memory must be in [0, 1], got {self.bilateral_memory}")
        if self.bilateral_memory != 1 and self.bilateral_scope == "clip":
            raise VideditError(f"{NAME} bilateral_memory weighs earlier windows for bilateral_scope 'window'; with "
                               f"'clip' every keyframe of the clip counts the same")
        if self.flow is not None and not isinstance(self.flow, Mapping):
            raise VideditError(f"{NAME} flow must be a mapping of flow options, got {self.flow!r}")
        if self.propagates == "flow" or self.pixels in FLOW_PIXELS:
            flow_config(self.flow)
        elif self.flow:
            raise VideditError(f"{NAME} flow options apply to propagation 'flow' or pixels true, 'warp' or 'guided' "
                               f"only")


def flow_config(options: Mapping[str, Any] | None) -> FlowConfig:
    return make_config(FlowConfig, dict(options or {}), f"{NAME} flow")


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


def select_keyframes(n_frames: int, *, every: int, select: str = "every", frames: np.ndarray | None = None,
                     quantile: float = 0.8, offset: int = 0, previous: np.ndarray | None = None,
                     last_keyframe: int | None = None) -> list[int]:
    """Clip indices of the keyframes among clip frames ``offset`` .. ``offset + n_frames - 1``.

    Either way the window's last frame is a keyframe, so that every other frame has a
    keyframe after it as well as one before (the earlier window's last keyframe,
    ``last_keyframe``, or the window's first frame): a frame after the last keyframe would
    have only the one before, and the next window would start from a keyframe of its own, a
    jump at the window border. ``every``: evenly spread from the earlier keyframe to the
    window's last frame, at most ``every`` apart (``cross_frame.window_keyframes``, which
    cross-frame attention's ``keyframes`` mode shares). ``change``: the clip's first frame,
    frames whose :func:`frame_changes` exceed the ``quantile`` of the window's, any frame
    ``every`` after the last keyframe (``previous``: the frame before the window, so that a cut
    at the border counts), and the window's last frame."""
    end = offset + n_frames - 1
    if n_frames < 1:
        return []
    if select == "every":
        return window_keyframes(range(offset, end + 1), every, last_keyframe)
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


def neighbours(frame: int, keyframes: list[int]) -> tuple[tuple[int, float], ...]:
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


def nearest_tokens(features: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """For each of ``features`` (T, C), the index of its most cosine-similar row of ``keys``
    (T', C) -> (T,) int64."""
    sim = F.normalize(features.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T   # (T, T')
    return sim.argmax(-1)


# ---- TokenFlow ----

class TokenFlowPropagation(AttentionModule):
    """On the named self-attention layers, non-keyframes' attention outputs become their
    keyframes' at nearest-neighbour tokens (every branch but ``source``)."""

    cross = False

    def __init__(self, layers: Collection[str], spans: list[int], keyframes: list[int], window: range, source: int,
                 persistent: dict, offload: bool = False, final: bool = False):
        self.names, self.offset, self.source = frozenset(layers), window.start, source
        self.keys, self.keyset = spans, set(keyframes)   # keyframes to draw from (the carried one too); own
        # keyframes' outputs and source features; the last keyframe's kept for the next window
        self.store = AnchorStore(window, self._anchors, set(keyframes[-1:]), persistent, offload, final)
        self._features: torch.Tensor | None = None

    def applies(self, layer: str, cross: bool) -> bool:
        return not cross and layer in self.names

    def qkv(self, call, q, k, v):
        if not call.info.inverting:
            self.store.begin(call)
            ks = call.split(k)[-1, self.source]                      # (fb, heads, T, d): source, conditional half
            self._features = ks.transpose(1, 2).flatten(2)         # (fb, T, heads * d)
        return q, k, v

    def output(self, call, out):
        if call.info.inverting:
            return out
        frames = [self.offset + f for f in call.info.frames]
        outs = call.split(out)                                     # (halves, nb, fb, T, C)
        feats = self._features[None, None]                         # (1, 1, fb, T, C')
        for j, g in enumerate(frames):
            self.store.put(call.layer, g, (outs[:, :, j], feats[:, :, j]))
        found = gather_anchors(self.store, call, frames, (outs, feats), self._anchors, NAME)
        self.store.done(call.layer, frames)
        others = [j for j, g in enumerate(frames) if g not in self.keyset]
        if not others:
            return out
        new = outs.clone()
        edit = [b for b in range(outs.shape[1]) if b != self.source]
        for j in others:
            if not found[j]:
                continue   # no keyframe yet (a later window edited without the clip's state)
            prop = 0
            for (a, w), (out_a, feat_a) in zip(neighbours(frames[j], self.keys), found[j]):
                idx = nearest_tokens(self._features[j], feat_a[0, 0])     # (T,)
                prop = prop + w * out_a[:, edit][:, :, idx]                  # (halves, nb - 1, T, C)
            new[:, edit, j] = prop.to(new.dtype)
        return new.flatten(0, 2)

    def _anchors(self, g: int) -> tuple[int, ...]:
        return () if g in self.keyset else tuple(a for a, _ in neighbours(g, self.keys))


# ---- flow ----


class PairFlows:
    """The source flow of each (frame, keyframe) pair of a window, estimated once and shared by
    the latent propagation and the pixel one (``compute_flows`` of the two frames)."""

    def __init__(self, config: FlowConfig, cache_dir):
        self.config, self.cache_dir, self.flows = config, cache_dir, {}

    def __call__(self, g: int, a: int, source_g: np.ndarray, source_a: np.ndarray):
        if (g, a) not in self.flows:
            self.flows[g, a] = compute_flows(np.stack([source_g, source_a]), self.config, cache_dir=self.cache_dir)
        return self.flows[g, a]


class FlowPropagation(StepCallback):
    """Each non-keyframe of the output branch becomes its nearest keyframes' latents warped onto
    it along the source frames' flow brought to the latent grid, occlusion-aware (module doc):
    the predicted clean latent x0 on every step before the last, the final latent after it."""

    def __init__(self, ctx: TemporalContext, keyframes: list[int], carried: dict | None, pair_flows: PairFlows,
                 state: dict):
        self.model, self.frames, self.offset = ctx.model, ctx.frames, ctx.frame_offset
        self.branch = ctx.output_branch
        self.window = range(self.offset, self.offset + len(self.frames))
        self.keys = keyframes                                      # clip indices, carried one included
        self.carried, self.pair_flows, self.state = carried, pair_flows, state
        own = [g for g in keyframes if g in self.window]
        self.others = [g for g in self.window if g not in set(keyframes)]
        # the next window's earlier keyframe: its source frame now, its latents step by step
        self.handover = None if not own else {"frame": own[-1], "source": self.frames[own[-1] - self.offset].copy(),
                                              "latent": {}}
        if self.handover is not None:
            state["carried"] = self.handover
        self.eps: torch.Tensor | None = None
        self.pairs: dict | None = None   # (frame, keyframe) -> (latent flow (h, w, 2), visible fraction (1, h, w))

    def x0(self, ctx: StepContext) -> bool:
        """Whether this step fuses the predicted clean latent (rather than the latent itself)."""
        return ctx.step < ctx.n_steps - 1

    def on_noise(self, ctx: StepContext, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.x0(ctx):
            self.eps = predict_x0_eps(z[self.branch], out[self.branch], ctx.alpha, self.model.prediction_type)[1]
        return out

    def on_step_end(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        y = x[self.branch].float()                                   # (F, C, h, w)
        if self.x0(ctx):
            y = clean_latent(y, self.eps, ctx.alpha_prev)
        latent = {g: y[g - self.offset] for g in self.window}
        if self.carried is not None and ctx.step in self.carried["latent"]:
            latent[self.carried["frame"]] = self.carried["latent"][ctx.step].to(y)
        if self.handover is not None:
            self.handover["latent"][ctx.step] = latent[self.handover["frame"]].detach().cpu().clone()
        if not self.others:
            return x
        self._prepare(y)
        new = y.clone()
        for g in self.others:
            num, den, seen = 0, 0, torch.zeros_like(y[0, :1])      # seen: visible to at least one, (1, h, w)
            for a, w in neighbours(g, self.keys):
                if a not in latent:
                    continue   # a carried keyframe without this step's latent (another window's settings)
                flow, visible = self.pairs[g, a]
                num = num + w * visible * warp(latent[a][None], flow[None])[0]   # a brought onto g
                den = den + w * visible
                seen = torch.maximum(seen, visible)
            if isinstance(den, torch.Tensor):
                new[g - self.offset] = seen * num / den.clamp_min(1e-8) + (1 - seen) * latent[g]
        if self.x0(ctx):
            new = renoise(new, self.eps, ctx.alpha_prev)
        x = x.clone()
        x[self.branch] = new.to(x.dtype)
        return x

    def _prepare(self, y: torch.Tensor) -> None:
        """Each (frame, keyframe) pair's source flow and visibility on the latent grid, once per window."""
        if self.pairs is not None:
            return
        factor = latent_factor(self.frames.shape[1:3], y.shape[-2:], NAME)
        source = {g: self.frames[g - self.offset] for g in self.window}
        if self.carried is not None:
            source[self.carried["frame"]] = self.carried["source"]
        self.pairs = {}
        for g in self.others:
            for a, _ in neighbours(g, self.keys):
                flows = self.pair_flows(g, a, source[g], source[a])
                flow = torch.from_numpy(downsample_flow(flows.forward[0], factor)).to(y)          # g -> a
                visible = torch.from_numpy(downsample_mask(~flows.occlusion[0], factor)).to(y)[None]
                self.pairs[g, a] = flow, visible


class PixelPropagation:
    """After decoding (``TemporalPlan.finish``): each non-keyframe's pixels from its nearest
    edited keyframes, warped along the source frames' flow and blended by temporal distance
    where they see the pixel; its own decoded edit where none does (module doc). With
    ``guided`` it is the keyframes' local colour transforms that are warped and blended, and
    each frame (keyframes too) is its own source frame under them (:mod:`videdit.video.guided`).
    The window's last keyframe (its source and edited pixels) is handed to the next window."""

    def __init__(self, ctx: TemporalContext, keyframes: list[int], own: list[int], pair_flows: PairFlows, state: dict,
                 guided: tuple[int, float] | None = None):
        self.frames, self.offset = ctx.frames, ctx.frame_offset
        self.window = range(self.offset, self.offset + len(self.frames))
        self.keys, self.own, self.pair_flows, self.state = keyframes, own, pair_flows, state
        self.guided = guided                        # (radius, eps) or None: warp pixels
        self.carried = state.get("pixels")          # {"frame", "source", "edited"} of an earlier window

    def __call__(self, edited: np.ndarray) -> np.ndarray:
        """uint8 frames (F, H, W, 3) of the window at the model size -> the same, propagated."""
        source = {g: self.frames[g - self.offset] for g in self.window}
        image = {g: edited[g - self.offset] for g in self.window}
        if self.carried is not None and self.carried["edited"].shape == edited.shape[1:]:
            source[self.carried["frame"]], image[self.carried["frame"]] = self.carried["source"], self.carried["edited"]
        fields: dict[int, np.ndarray] = {}   # what moves along the flow, per frame, made when first needed

        def field(g: int) -> np.ndarray:
            """Frame g's pixels (H, W, 3), or with ``guided`` its colour transform stacked (H, W, 12)."""
            if g not in fields:
                if self.guided is None:
                    fields[g] = image[g].astype(np.float32)
                else:
                    radius, eps = self.guided
                    radius = radius or guided.auto_radius(edited.shape[1:3])
                    fields[g] = guided.fit(source[g], image[g], radius, eps).stacked()
            return fields[g]

        def render(g: int, f: np.ndarray) -> np.ndarray:
            if self.guided is None:
                return np.clip(np.rint(f), 0, 255)
            return guided.apply(guided.ColourTransform.unstack(f), source[g])

        keyset = set(self.keys)
        out = edited.copy()
        for g in self.window:
            if g in keyset:
                if self.guided is not None:                                  # keyframes: their source under their map
                    out[g - self.offset] = render(g, field(g))
                continue                                                     # else as decoded
            num, den = 0, np.zeros(edited.shape[1:3], np.float32)
            for a, w in neighbours(g, self.keys):
                if a not in image:
                    continue
                flows = self.pair_flows(g, a, source[g], source[a])
                visible = (~flows.occlusion[0]).astype(np.float32)                     # (H, W)
                num = num + w * visible[..., None] * warp(field(a), flows.forward[0])  # a brought onto g
                den += w * visible
            seen = den > 0                                                   # elsewhere: the frame's own field
            if seen.all():
                out[g - self.offset] = render(g, num / den[..., None])
            elif seen.any():
                out[g - self.offset] = render(g, np.where(seen[..., None], num / np.maximum(den, 1e-8)[..., None],
                                                          field(g)))
            elif self.guided is not None:
                out[g - self.offset] = render(g, field(g))
        if self.own:
            k = self.own[-1]
            self.state["pixels"] = {"frame": k, "source": source[k].copy(), "edited": image[k].copy()}
        return out


class BilateralPixels:
    """After decoding (``TemporalPlan.finish``): the window's keyframes' (source, edit) pairs
    join the grid of colour maps in the clip's state (:mod:`videdit.video.bilateral`); the
    frames become their own source under it.

    Scope ``clip``: one grid from all the clip's keyframes. A clip of one window is made at
    once; a longer one hands :class:`ClipRecolour` to ``edit_video``'s second pass
    (``clip_state[CLIP_FINISH]``) and returns its windows as decoded. Scope ``window``: each
    window is made at once from its keyframes and the earlier windows' (at ``memory`` times
    their weight), the maps going linearly across it from the earlier window's to its own."""

    def __init__(self, ctx: TemporalContext, own: list[int], config: KeyframesConfig, state: dict):
        self.frames, self.offset, self.own, self.state = ctx.frames, ctx.frame_offset, own, state
        self.clip_state, self.final = ctx.clip_state, ctx.final_window
        self.cell, self.bins = config.bilateral_cell, config.bilateral_bins
        self.scope, self.memory = config.bilateral_scope, config.bilateral_memory

    def __call__(self, edited: np.ndarray) -> np.ndarray:
        """uint8 frames (F, H, W, 3) of the window at the model size -> the same, recoloured."""
        size = edited.shape[1:3]
        shape = bilateral.grid_shape(size, self.cell, self.bins)
        earlier = self.state.get("bilateral")
        if earlier is not None and (earlier.shape != shape or earlier.size != size):
            raise VideditError(f"{NAME} pixels='bilateral' needs every window of a clip at one size, got "
                               f"{size[1]}x{size[0]} after {earlier.size[1]}x{earlier.size[0]}")
        if self.scope == "clip" and earlier is not None:
            grid = earlier                                            # one grid for the clip, added to in place
        else:
            grid = bilateral.ColourGrid(shape, size)
            if earlier is not None and self.memory > 0:
                grid += earlier.scaled(self.memory)
        for g in self.own:
            grid.add(self.frames[g - self.offset], edited[g - self.offset])
        if self.final:
            self.state.pop("bilateral", None)                         # the clip ends here: nothing carries over
        else:
            self.state["bilateral"] = grid
        if self.scope == "clip":
            if earlier is None and self.final:                        # the whole clip is this window
                return ClipRecolour(grid)(self.frames)
            self.clip_state.setdefault(CLIP_FINISH, ClipRecolour(grid))
            return edited                                             # edit_video's second pass makes the frames
        maps = grid.solve()
        if earlier is None:
            return np.stack([bilateral.apply(maps, shape, f) for f in self.frames])
        # from the earlier window's maps to this one's across the window, so that the border is no jump
        before, n = earlier.solve(), len(self.frames)
        return np.stack([bilateral.apply(before + (i + 1) / n * (maps - before), shape, f)
                         for i, f in enumerate(self.frames)])


class ClipRecolour:
    """The second pass of ``pixels='bilateral'`` (scope ``clip``): a window's source frames at
    the model size under the maps of the clip's grid, solved once when first called (by then
    every window has added its keyframes)."""

    def __init__(self, grid: bilateral.ColourGrid):
        self.grid, self.maps = grid, None

    def __call__(self, frames: np.ndarray, frame_offset: int = 0) -> np.ndarray:
        if frames.shape[1:3] != self.grid.size:
            raise VideditError(f"{NAME} the clip's colour maps were fitted at {self.grid.size[1]}x{self.grid.size[0]}, "
                               f"got frames of {frames.shape[2]}x{frames.shape[1]}")
        if self.maps is None:
            self.maps = self.grid.solve()
        return np.stack([bilateral.apply(self.maps, self.grid.shape, f) for f in frames])


def window_keys(config: KeyframesConfig, frames: np.ndarray | None, n: int, offset: int, state: dict) -> list[int]:
    """The keyframes (clip indices) of the window of ``n`` frames from clip frame ``offset``,
    given the module's clip ``state`` as the earlier windows left it."""
    return select_keyframes(n, every=config.every, select=config.select, frames=frames, quantile=config.quantile,
                            offset=offset, previous=state.get("previous"), last_keyframe=state.get("last_keyframe"))


def edited_frames(config: KeyframesConfig, frames: np.ndarray, offset: int, state: dict) -> list[int] | None:
    """With ``pixels='bilateral'`` every output frame is its source under maps fitted from the
    keyframes alone, and keyframes attend only to keyframes: the model edits just them."""
    if config.pixels != "bilateral":
        return None
    return [g - offset for g in window_keys(config, frames, len(frames), offset, state)]


@register_temporal(NAME, KeyframesConfig, edited_frames=edited_frames)
def keyframes(ctx: TemporalContext, config: KeyframesConfig) -> TemporalPlan:
    """Keyframes edited jointly, the rest by TokenFlow (default) or flow, or by colour maps (pixels='bilateral')."""
    if config.propagates == "tokenflow" and ctx.source_branch is None:
        raise VideditError(f"{NAME} propagation 'tokenflow' matches tokens by the source branch's features, and this "
                           f"editor runs none; use an editor with a source branch ({', '.join(SOURCE_BRANCH_EDITORS)})"
                           f", e.g. prompt_to_prompt, or propagation 'flow'")
    if ctx.frames is None and (config.select == "change" or config.propagates == "flow" or config.pixels):
        raise VideditError(f"{NAME} select='change', propagation 'flow' and pixels need the window's source frames "
                           f"(edit_latents(..., frames=...))")
    n = ctx.inversion.noise.shape[0] if ctx.edited is None else len(ctx.frames)
    window = range(ctx.frame_offset, ctx.frame_offset + n)
    layers = choose_layers(ctx.model.unet, patterns(NAME, "layers", config.layers), NAME, "layers", cross=False)
    state = ctx.clip_state.setdefault(NAME, {})
    keys = window_keys(config, ctx.frames, n, ctx.frame_offset, state)
    carried = state.get("last_keyframe")
    spans = keyframe_anchors(keys, carried)                          # keyframes the window attends to
    keyset = set(keys)
    modules: list[AttentionModule] = []
    callbacks: list[StepCallback] = []
    denoised: list[int] | range = window                             # clip indices of the frames the model edits
    if ctx.edited is not None:                                       # the keyframes alone (edited_frames)
        denoised = [ctx.frame_offset + i for i in ctx.edited]
        if config.pixels != "bilateral" or denoised != keys:
            raise VideditError(f"{NAME}: the model was given frames {denoised} of the clip to edit, and this window's "
                               f"keyframes are {keys} (pixels={config.pixels!r}); pass one clip_state from window "
                               f"to window, and the subset edited_frames names")
    if config.pixels == "bilateral":                                 # every frame comes from the grid, fitted on
        attend = lambda g: spans                                     # noqa: E731: keyframes: nothing to propagate
    else:
        pair_flows = PairFlows(flow_config(config.flow), ctx.cache_dir)   # one estimate per pair for both stages
        if config.propagates == "tokenflow":
            modules.append(TokenFlowPropagation(layers, list(spans), keys, window, ctx.source_branch,
                                                state.setdefault("tokenflow", {}), config.offload, ctx.final_window))
            attend = lambda g: spans if g in keyset else (g,)       # noqa: E731: non-keyframes are replaced
        else:
            callbacks.append(FlowPropagation(ctx, list(spans), state.get("carried"), pair_flows, state))
            attend = lambda g: spans                                 # noqa: E731: their own edit fills occlusions
    kv = AnchorStore(denoised, attend, set(keys[-1:]), state.setdefault("anchors", {}), config.offload,
                     ctx.final_window)
    modules.append(CrossFrameAttention(layers, attend, denoised, kv, what=NAME, source_branch=ctx.source_branch))
    if keys:
        state["last_keyframe"] = keys[-1]
    finish = None
    if config.pixels == "bilateral":
        finish = BilateralPixels(ctx, keys, config, state)
    elif config.pixels:
        finish = PixelPropagation(ctx, list(spans), keys, pair_flows, state,
                                  (config.guided_radius, config.guided_eps) if config.pixels == "guided" else None)
    if ctx.frames is not None:
        state["previous"] = ctx.frames[-1].copy()
    # keyframes run first, together (else a batch would attend to keyframes not run yet); a subset is all keyframes
    lead = tuple(range(len(keys))) if ctx.edited is not None else tuple(g - ctx.frame_offset for g in keys)
    return TemporalPlan(modules=modules, callbacks=callbacks, lead_frames=lead, finish=finish)
