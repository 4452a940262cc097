"""After decoding: the frames between keyframes from the edited keyframes' pixels warped along
the source's optical flow (Rerender-A-Video's last stage, Yang et al. 2023, Sec. 4.3, which
propagates with Ebsynth's patch-based synthesis; here by warping).

Each non-keyframe's pixels become its two nearest edited keyframes' pixels warped onto it
along the source frames' flow, blended by temporal distance where the keyframe sees the pixel,
with the frame's own decoded edit kept where neither does. Every frame between two keyframes
then moves exactly as the source does, wherever the flow is right; what the keyframes
disagree on fades across the span instead of flickering. A window hands its last keyframe
(source and edited pixels) to the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from videdit.video.flow import FlowConfig
from videdit.video.keyframe_flow import flow_config
from videdit.video.keyframes import Keyframes, neighbours
from videdit.video.module import (TemporalContext, TemporalModule, TemporalPlan, Window, WindowLatents, find,
                                  register_temporal)
from videdit.video.warp import warp

NAME = "pixels_warp"


@dataclass(frozen=True)
class PixelsWarpConfig:
    flow: Mapping[str, Any] | None = None   # options of videdit.video.flow.FlowConfig

    def __post_init__(self):
        flow_config(self.flow, NAME)


@register_temporal
class PixelsWarp(TemporalModule):
    """After decoding, the frames between keyframes from the edited keyframes' pixels warped along the flow."""

    name = NAME
    config_class = PixelsWarpConfig
    order = 10                      # after decoding, before keep_background
    renders_keyframes = False       # keyframes keep their decoded edit
    renders_unseen = False          # so does a frame no keyframe sees

    def __init__(self, config):
        super().__init__(config)
        self.keyframes: Keyframes | None = None
        self.flow: FlowConfig = flow_config(config.flow, self.name)
        self.carried: dict | None = None   # {"frame", "source", "edited"}: the window before's last keyframe
        self.ctx: TemporalContext | None = None

    def bind(self, modules) -> None:
        self.keyframes = find(modules, Keyframes, self.name)

    def plan(self, window: Window, ctx: TemporalContext) -> TemporalPlan:
        window.source(self.name)
        self.ctx = ctx
        carried = self.carried
        carried = None if carried is None or carried["source"].shape != window.frames.shape[1:] else (
            carried["frame"], carried["source"])
        self.keyframes.flows_ahead(ctx, self.flow, window, carried)   # estimated while the window denoises
        return TemporalPlan()

    def field(self, g: int, source: np.ndarray, edited: np.ndarray) -> np.ndarray:
        """What moves along the flow from frame g: its edited pixels (H, W, 3)."""
        return edited.astype(np.float32)

    def render(self, g: int, field: np.ndarray, source: np.ndarray) -> np.ndarray:
        """A field carried onto frame g -> its pixels."""
        return np.clip(np.rint(field), 0, 255)

    def finish_window(self, window: Window, frames: np.ndarray, latents: WindowLatents) -> np.ndarray:
        lay = self.keyframes.layout(window)
        pair_flows = self.keyframes.flows(self.ctx)
        source = {g: window.frames[g - window.start] for g in window.indices}
        image = {g: frames[g - window.start] for g in window.indices}
        carried = self.carried
        if carried is not None and carried["edited"].shape == frames.shape[1:]:
            source[carried["frame"]], image[carried["frame"]] = carried["source"], carried["edited"]
        fields: dict[int, np.ndarray] = {}   # what moves along the flow, per frame, made when first needed

        def field(g: int) -> np.ndarray:
            if g not in fields:
                fields[g] = self.field(g, source[g], image[g])
            return fields[g]

        keyset = set(lay.keys)
        out = frames.copy()
        for g in window.indices:
            if g in keyset:
                if self.renders_keyframes:
                    out[g - window.start] = self.render(g, field(g), source[g])
                continue
            num, den = 0, np.zeros(frames.shape[1:3], np.float32)
            for a, w in neighbours(g, lay.spans):
                if a not in image:
                    continue
                flows = pair_flows(self.flow, g, a, source[g], source[a])
                visible = (~flows.occlusion[0]).astype(np.float32)                     # (H, W)
                num = num + w * visible[..., None] * warp(field(a), flows.forward[0])  # a brought onto g
                den += w * visible
            seen = den > 0                                                   # elsewhere: the frame's own field
            if seen.all():
                out[g - window.start] = self.render(g, num / den[..., None], source[g])
            elif seen.any():
                out[g - window.start] = self.render(
                    g, np.where(seen[..., None], num / np.maximum(den, 1e-8)[..., None], field(g)), source[g])
            elif self.renders_unseen:
                out[g - window.start] = self.render(g, field(g), source[g])
        if lay.keys:
            k = lay.keys[-1]
            self.carried = {"frame": k, "source": source[k].copy(), "edited": image[k].copy()}
        return out

