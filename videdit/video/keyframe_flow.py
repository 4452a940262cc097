"""Keyframe flow: the frames between keyframes become the keyframes' latents warped along the
source's optical flow.

The frames are denoised with their attention on the keyframes (the ``keyframes`` module), and
at each step each frame between is replaced, on the latent grid, by its two nearest keyframes'
latents warped onto it along optical flow of the *source* frames
(:func:`videdit.video.flow.compute_flows`, brought to the latents' resolution by
:func:`videdit.video.warp.downsample_flow` and ``downsample_mask``), blended by temporal
distance where the keyframe sees the cell (forward-backward occlusion check; the fraction of
the cell's pixels it sees) and keeping the frame's own latent where neither does. On every
step before the last this fuses the predicted clean latent x0 and re-noises it with the step's
noise (as ``flow_propagation`` does with ``target="x0"``); after the last step, the final
latents. No VAE round trip: decoding, warping pixels and re-encoding blurs with any VAE.
Cost: the flow of each (frame, keyframe) pair, once per window, and a latent warp per pair
and step. A window hands its last keyframe (source frame and latent at each step) to the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from videdit.config import make_config
from videdit.core.ddim import clean_latent, predict_x0_eps, renoise
from videdit.core.loop import StepCallback, StepContext
from videdit.video.flow import FlowConfig
from videdit.video.keyframes import Keyframes, Layout, PairFlows, neighbours
from videdit.video.module import TemporalContext, TemporalModule, TemporalPlan, Window, find, register_temporal
from videdit.video.warp import downsample_flow, downsample_mask, latent_factor, warp

NAME = "keyframe_flow"


def flow_config(options: Mapping[str, Any] | None, what: str) -> FlowConfig:
    """A stage's ``flow`` option (a mapping of :class:`FlowConfig` options) -> the config."""
    return make_config(FlowConfig, dict(options or {}), f"{what} flow")


@dataclass(frozen=True)
class KeyframeFlowConfig:
    flow: Mapping[str, Any] | None = None   # options of videdit.video.flow.FlowConfig

    def __post_init__(self):
        flow_config(self.flow, NAME)


class FlowPropagation(StepCallback):
    """Each non-keyframe of the output branch becomes its nearest keyframes' latents warped onto
    it along the source frames' flow brought to the latent grid, occlusion-aware (module doc):
    the predicted clean latent x0 on every step before the last, the final latent after it."""

    def __init__(self, ctx: TemporalContext, window: Window, layout: Layout, carried: dict | None,
                 pair_flows: PairFlows, flow: FlowConfig):
        self.model, self.frames, self.offset = ctx.model, window.source(NAME), window.start
        self.branch = ctx.output_branch
        self.window = window.indices
        self.keys = layout.spans                                   # clip indices, carried one included
        self.carried, self.pair_flows, self.flow = carried, pair_flows, flow
        self.others = [g for g in self.window if g not in set(layout.spans)]
        # the next window's earlier keyframe: its source frame now, its latents step by step
        self.handover = None if not layout.keys else {
            "frame": layout.keys[-1], "source": self.frames[layout.keys[-1] - self.offset].copy(), "latent": {}}
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
                flows = self.pair_flows(self.flow, g, a, source[g], source[a])
                flow = torch.from_numpy(downsample_flow(flows.forward[0], factor)).to(y)          # g -> a
                visible = torch.from_numpy(downsample_mask(~flows.occlusion[0], factor)).to(y)[None]
                self.pairs[g, a] = flow, visible


@register_temporal
class KeyframeFlow(TemporalModule):
    """The frames between keyframes from the keyframes' latents warped along the source's optical flow."""

    name = NAME
    config_class = KeyframeFlowConfig

    def __init__(self, config: KeyframeFlowConfig):
        super().__init__(config)
        self.keyframes: Keyframes | None = None
        self.flow = flow_config(config.flow, NAME)
        self.carried: dict | None = None   # the window before's last keyframe: source frame, latent per step

    def bind(self, modules) -> None:
        self.keyframes = find(modules, Keyframes, NAME)

    def plan(self, window: Window, ctx: TemporalContext) -> TemporalPlan:
        carried = None if self.carried is None else (self.carried["frame"], self.carried["source"])
        self.keyframes.flows_ahead(ctx, self.flow, window, carried)   # estimated while the keyframes denoise
        callback = FlowPropagation(ctx, window, self.keyframes.layout(window), self.carried,
                                   self.keyframes.flows(ctx), self.flow)
        if callback.handover is not None:
            self.carried = callback.handover
        return TemporalPlan(callbacks=[callback])
