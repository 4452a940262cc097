"""Flow propagation: each edited frame is pulled towards the previous one, warped along the
source clip's optical flow (after Rerender-A-Video's pixel-aware cross-frame latent fusion,
Yang et al. 2023).

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

What a window hands the next (in ``clip_state``): its last source frame (for the flow across
the window border) and its last frame's fused value at each active step, so memory is one
frame's worth per step however long the clip; ``clip_state["flow_memo"]`` holds the current
window's flow for other modules that want it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from videdit.core.ddim import predict_x0_eps
from videdit.core.loop import StepCallback, StepContext
from videdit.errors import VideditError
from videdit.video.flow import FLOW_METHODS, FlowConfig, compute_flows
from videdit.video.registry import TemporalContext, TemporalPlan, register_temporal
from videdit.video.warp import downsample_flow, downsample_mask, warp

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
    raft_weights: str | None = None

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
                          raft_weights=self.raft_weights)


def clean_latent(y: torch.Tensor, eps: torch.Tensor, alpha_prev: float) -> torch.Tensor:
    """The clean latent a DDIM step moved towards: the step's output ``y`` at noise level
    ``alpha_prev`` less the step's noise ``eps`` (from :func:`predict_x0_eps`)."""
    return predict_x0_eps(y, eps, alpha_prev)[0]


def renoise(y0: torch.Tensor, eps: torch.Tensor, alpha_prev: float) -> torch.Tensor:
    """The inverse of :func:`clean_latent`: a clean latent back at noise level ``alpha_prev``."""
    return alpha_prev ** 0.5 * y0 + (1 - alpha_prev) ** 0.5 * eps


def latent_factor(frame_size: tuple[int, int], latent_size: tuple[int, int], what: str) -> int:
    """How many pixels of the frames (H, W) one latent cell (h, w) covers (the VAE's 8)."""
    (H, W), (h, w) = frame_size, latent_size
    factor = H // h
    if factor * h != H or factor * w != W:
        raise VideditError(f"{what}: frames {W}x{H} are not a whole multiple of the latents {w}x{h}")
    return factor


@register_temporal(NAME, FlowPropagationConfig)
def flow_propagation(ctx: TemporalContext, config: FlowPropagationConfig) -> TemporalPlan:
    """Fuse each frame with its predecessor warped along the source's flow (Rerender-A-Video)."""
    if ctx.frames is None:
        raise VideditError(f"{NAME} needs the window's source frames; edit through edit_frames or edit_video")
    return TemporalPlan(callbacks=[FlowPropagation(ctx, config)])


class FlowPropagation(StepCallback):
    """The fusion of :mod:`videdit.video.propagation` as a step callback."""

    def __init__(self, ctx: TemporalContext, config: FlowPropagationConfig):
        self.ctx, self.config = ctx, config
        frames = ctx.frames                                           # (F, H, W, 3)
        prev = ctx.clip_state.get(NAME)
        # The previous window's hand-over, if it is the window just before this one.
        if prev is None or prev["next_offset"] != ctx.frame_offset or prev["source"].shape != frames.shape[1:]:
            prev = None
        self.prev = prev
        self.frames = frames if prev is None else np.concatenate([prev["source"][None], frames])
        self.state = {"next_offset": ctx.frame_offset + len(frames), "source": frames[-1].copy(), "fused": {}}
        ctx.clip_state[NAME] = self.state  # the next window reads it; self.prev keeps ours
        self.eps: torch.Tensor | None = None
        self.flow: torch.Tensor | None = None   # (F', h, w, 2) latent-resolution flow, frame k+1 -> k
        self.mask: torch.Tensor | None = None   # (F', 1, h, w) visible fraction of frame k+1 in k

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
        flows = compute_flows(self.frames, self.config.flow_config(), cache_dir=self.ctx.cache_dir,
                              memo=self.ctx.clip_state.setdefault("flow_memo", {}), device=y.device)
        self.flow = torch.from_numpy(downsample_flow(flows.backward, factor)).to(y)           # (F', h, w, 2)
        self.mask = torch.from_numpy(downsample_mask(~flows.occlusion_backward, factor)).to(y)[:, None]
