"""Flow propagation: each edited frame is pulled towards the previous one, warped along the
source clip's optical flow. videdit's own mechanism, loosely after Rerender-A-Video's
cross-frame latent fusion (Yang et al. 2023); Rerender's algorithm itself is the ``rerender``
module (``configs/rerender.yaml``), this one ``configs/rerender-pull.yaml``.

At every step in ``[start, end)`` of the sampling, for the output branch and frames
f = 1 .. F-1 in turn (frame 0 uses the previous window's last frame)::

    x_f <- (1 - s m_f) x_f + s m_f warp(x_{f-1}, b_f)

with ``b_f`` the source's flow from frame f to f-1 and ``m_f`` the fraction of frame f's
pixels under each latent pixel that frame f-1 sees (not occluded), both at latent resolution.
Frames are fused in order, so frame f-1 is already fused when frame f reads it: the first
frame's content travels along the clip. Rerender fuses the predicted clean latent and then
re-noises it; ``target="x0"`` does that here: the step's latent is split into the clean
latent x0 and noise eps that the model predicted, x0 is fused and the same eps added back,
so the noise of each frame is left alone. ``target="latent"`` fuses the noisy latent itself.

What a window hands the next: its last source frame (for the flow across the window border)
and its last frame's fused value at each active step, so memory is one frame's worth per step
however long the clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from videdit.core.ddim import clean_latent, predict_x0_eps, renoise
from videdit.core.loop import StepCallback, StepContext
from videdit.errors import VideditError
from videdit.video.flow import FLOW_METHODS, FlowConfig, compute_flows_ahead
from videdit.video.module import TemporalContext, TemporalModule, TemporalPlan, Window, register_temporal
from videdit.video.warp import downsample_flow, downsample_mask, latent_factor, warp

NAME = "flow_propagation"
TARGETS = ("x0", "latent")


@dataclass(frozen=True)
class FlowPropagationConfig:
    strength: float = 0.5          # s: how far each frame moves towards its warped predecessor, per step
    start: float = 0.2             # fraction of the steps before fusion begins
    end: float = 0.8               # fraction of the steps after which it stops (the last steps add detail freely)
    target: str = "x0"             # "x0": fuse the predicted clean latent; "latent": the noisy latent
    method: str = "dis"            # flow: dis, farneback or raft
    preset: str = "medium"         # DIS preset: ultrafast, fast, medium
    colour: str = "lab"            # DIS/Farneback on grey and Lab channels, best per pixel; or "gray"
    raft_weights: str | None = None  # RAFT: a local torchvision raft_large or raft_small state dict
    raft_updates: int = 12           # RAFT's refinement iterations

    def __post_init__(self):
        if not 0 <= self.strength <= 1:
            raise VideditError(f"{NAME}: strength must be in [0, 1], got {self.strength}")
        if not 0 <= self.start <= self.end <= 1:
            raise VideditError(f"{NAME}: need 0 <= start <= end <= 1, got start={self.start}, end={self.end}")
        if self.target not in TARGETS:
            raise VideditError(f"{NAME}: unknown target {self.target!r}; choose from {list(TARGETS)}")
        if self.method not in FLOW_METHODS:
            raise VideditError(f"{NAME}: unknown flow method {self.method!r}; choose from {list(FLOW_METHODS)}")
        self.flow_config()  # the flow options are checked now, not when the first window runs

    def flow_config(self) -> FlowConfig:
        return FlowConfig(method=self.method, preset=self.preset, colour=self.colour,
                          raft_weights=self.raft_weights, raft_updates=self.raft_updates)


class FlowPropagation(StepCallback):
    """The fusion of :mod:`videdit.video.flow_propagation` (module doc) as a step callback."""

    def __init__(self, ctx: TemporalContext, config: FlowPropagationConfig, window: Window, prev: dict | None,
                 memo: dict):
        self.ctx, self.config, self.memo = ctx, config, memo
        frames = window.source(NAME)                                  # (F, H, W, 3)
        # The previous window's hand-over, if it is the window just before this one.
        if prev is None or prev["next_offset"] != window.start or prev["source"].shape != frames.shape[1:]:
            prev = None
        self.prev = prev
        self.frames = frames if prev is None else np.concatenate([prev["source"][None], frames])
        self.state = {"next_offset": window.start + len(frames), "source": frames[-1].copy(), "fused": {}}
        self.eps: torch.Tensor | None = None
        self.flow: torch.Tensor | None = None   # (F', h, w, 2) latent-resolution flow, frame k+1 -> k
        self.mask: torch.Tensor | None = None   # (F', 1, h, w) visible fraction of frame k+1 in k
        # the source flow, estimated in the flow thread while the window's first steps denoise
        self.flows = compute_flows_ahead(self.frames, config.flow_config(), cache_dir=ctx.cache_dir, memo=memo,
                                         device=getattr(ctx.model, "device", None)) \
            if len(self.frames) > 1 and config.strength > 0 else None

    def active(self, sctx: StepContext) -> bool:
        frac = sctx.step / sctx.n_steps
        return self.config.strength > 0 and self.config.start <= frac < self.config.end

    def on_noise(self, sctx: StepContext, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.config.target == "x0" and self.active(sctx):
            b = self.ctx.output_branch
            self.eps = predict_x0_eps(z[b], out[b], sctx.alpha, self.ctx.model.prediction_type)[1]  # (F, C, h, w)
        return out

    def on_step_end(self, sctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        if not self.active(sctx):
            return x
        b = self.ctx.output_branch
        y = x[b].float()                                              # (F, C, h, w)
        if self.config.target == "x0":
            y = clean_latent(y, self.eps, sctx.alpha_prev)             # the clean latent the step moved towards
        if len(self.frames) > 1:
            self._prepare(y)
        last = None                                                   # the previous window's last frame
        if self.prev is not None and sctx.step in self.prev["fused"]:
            last = self.prev["fused"][sctx.step].to(y)
        fused, s = [], self.config.strength
        for f in range(len(y)):
            src = fused[f - 1] if f > 0 else last                     # (C, h, w), already fused
            if src is None:
                fused.append(y[f])
                continue
            pair = f if self.prev is not None else f - 1              # flow pair ending at frame f
            m = s * self.mask[pair]                                   # (1, h, w)
            fused.append((1 - m) * y[f] + m * warp(src[None], self.flow[pair][None])[0])
        y = torch.stack(fused)                                        # (F, C, h, w)
        self.state["fused"][sctx.step] = y[-1].detach().cpu().clone()
        if self.config.target == "x0":
            y = renoise(y, self.eps, sctx.alpha_prev)
        x = x.clone()
        x[b] = y.to(x.dtype)
        return x

    def _prepare(self, y: torch.Tensor) -> None:
        """The source flow at the latents' resolution, once per window."""
        if self.flow is not None:
            return
        factor = latent_factor(self.frames.shape[1:3], y.shape[-2:], NAME)
        flows = self.flows.result()
        self.flow = torch.from_numpy(downsample_flow(flows.backward, factor)).to(y)           # (F', h, w, 2)
        self.mask = torch.from_numpy(downsample_mask(~flows.occlusion_backward, factor)).to(y)[:, None]


@register_temporal
class FlowPropagationModule(TemporalModule):
    """Fuse each frame with its predecessor warped along the source's flow (videdit's, after Rerender-A-Video)."""

    name = NAME
    config_class = FlowPropagationConfig

    def __init__(self, config: FlowPropagationConfig):
        super().__init__(config)
        self.handover: dict | None = None   # the window before's last source frame and fused latents
        self.memo: dict = {}                # compute_flows' memo of the current window's flow

    def plan(self, window: Window, ctx: TemporalContext) -> TemporalPlan:
        callback = FlowPropagation(ctx, self.config, window, self.handover, self.memo)
        self.handover = callback.state
        return TemporalPlan(callbacks=[callback])
