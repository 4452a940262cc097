"""Rerender-A-Video's key-frame translation (Yang et al. 2023, Sec. 4.1-4.2) and its Ebsynth
stage (Sec. 4.3), after williamyang1991/Rerender_A_Video.

Keyframes: clip frame 0 (the *first* frame, every keyframe's anchor) and frames 1, 1 +
``interval``, 1 + 2 ``interval``, ... (``rerender.py``: ``cid = i + 1`` for ``i`` in
``range(0, frame_count - 1, interval)``), and the clip's last frame. They are sampled one
after another (the module ``edits_in_passes``): frame 0 once, each later keyframe twice (the
*direct* pass, then the *fused* pass with pixel-aware fusion), each pass from the same seeded
noise (``sdedit`` inversion). What each pass does, as ``src/controller.py``
(``AttentionControl``) and ``src/ddim_v_hacked.py`` (``DDIMVSampler.ddim_sampling``) do:

- *Cross-frame attention* (``cross_period``, all steps by default): on the self-attention
  layers of the decoder (``layers``; the official ``place_in_unet == 'up'`` with fewer than
  1281 channels; its ``loose_cfattn`` variant, fewer than 1280, is ``layers`` without
  ``up_blocks.1`` on SD 1.5), a keyframe's keys and values are the first frame's and the previous
  keyframe's, concatenated (its own are not among them). The previous keyframe's are those of
  its fused pass; only keyframes ``1 + k style_update_freq`` replace them (every keyframe at
  the defaults: interval = style_update_freq = 10).
- *Shape-aware fusion* (``warp_period``, steps ``0 .. 0.1 N``, bounds included): the predicted
  clean latent x0 is *replaced* by the first frame's x0 of the same step warped along the
  source's flow (nearest), where the latent cell sees it: ``1 - max_pool(8)`` of the
  occlusion mask dilated (9x9) and blurred (Gaussian 9, sigma 18), so a cell with any occluded
  pixel is left alone. The code warps the first frame's x0 (``firstx0 = True``);
  ``shape_anchor="previous"`` warps the previous keyframe's, as the paper writes (Eq. 4).
- *AdaIN* (``ada_period``): x0 takes the first frame's per-channel mean and std of the same
  step. The official default (1, 1) applies it at no step; the example configs'
  [0.8, 1] in the last fifth.
- *Pixel-aware fusion* (fused pass, ``mask_period``: steps strictly inside (0.5 N, 0.8 N)):
  the decoded results of the previous keyframe and the first frame warped onto this frame
  (bilinear) replace the direct pass's pixels outside their blurred occlusion masks; the blend
  is encoded with the VAE's fidelity compensation (``x + (x - E(D(x)))``, not where it
  overshoots by 0.25) and the latent is pulled towards it at each of those steps:
  ``x <- w q(xtrg) + (1 - w) (x - d) + r d`` with ``w = mask_strength * mask``, ``d`` the
  step's noise term and ``r`` the noise rescale (``inner_strength``, flat regions only when
  ``smooth_boundary``).
- *Colour correction* (``color_preserve=False``): each keyframe's input frame is matched to
  the first output's Lab histogram, luminosity kept, before it is noised. The official default
  keeps the colours (``color_preserve = True``; its JSON key is misspelt ``color_perserve``,
  so the JSON configs cannot turn it off).

Frames between keyframes (the second pass over the clip, :meth:`Rerender.finish_clip`), as
``video_blend.py``: from each of the two nearest keyframes a chain of Ebsynth syntheses
(:mod:`videdit.video.ebsynth`), the earlier keyframe's forward and the later one's backward,
frame by frame (``process_one_sequence``): the keyframe's result is the style; the guides are the
source frames (weight 6), their Laplacian edges (0.5), the chain's previous synthesis warped onto
the frame along the flow (nearest, occluded pixels inpainted; the keyframe's result on its side,
0.5) and a coordinate ramp carried the same way (2). Then per pixel the synthesis with the
smaller weighted patch error (``g_error_mask``, weights by temporal distance, a choice of the
later keyframe carried along the flow), its histogram-preserving blend
(``blender/histogram_blend.py``) and the Poisson gradient blend (``blender/poisson_fusion.py``;
``rerender.py`` runs it unless ``-nps``). ``propagate="warp"`` makes the two candidates by
warping the keyframes' results straight onto the frame along the flow instead (faster). A
backward chain that crosses into the window before keeps its state at the window's first frame
from the first pass (:meth:`Rerender.finish_window`).

Departures: DIS (or RAFT) flow where the official code runs GMFlow; VAE means where it samples the
posterior; decoded results rounded to 8 bits before they are warped.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Mapping

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from videdit.attention import choose_layers, patterns
from videdit.config import make_config
from videdit.core.ddim import clean_latent, predict_x0_eps, renoise
from videdit.core.loop import StepCallback, StepContext
from videdit.errors import VideditError
from videdit.masks import gaussian_blur
from videdit.registry import departs
from videdit.video.cross_frame import AnchorStore, CrossFrameAttention
from videdit.video.ebsynth import EbsynthConfig, Exemplar, edges, positional_ramp
from videdit.video.flow import FlowConfig, Flows, compute_flows, compute_flows_ahead
from videdit.video.module import TemporalContext, TemporalModule, TemporalPlan, Window, register_temporal

NAME = "rerender"
ANCHORS = ("first", "previous")
PROPAGATIONS = ("ebsynth", "warp")
# the official occlusion test's flow: GMFlow there; DIS here, without videdit's photometric test and dilation
DEFAULT_FLOW = {"photometric": None, "dilate": 0}


def _period(value, what: str) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise VideditError(f"{NAME} {what} must be [start, end] fractions of the steps, got {value!r}")
    start, end = float(value[0]), float(value[1])
    if not 0 <= start <= 1 or not 0 <= end <= 1:
        raise VideditError(f"{NAME} {what} must lie in [0, 1], got {value!r}")
    return start, end


@dataclass(frozen=True)
class RerenderConfig:
    """Defaults: Rerender-A-Video's ``src/config.py`` (``RerenderConfig.create_from_parameters``)."""

    interval: int = 10                          # keyframes 0, 1, 1 + interval, ...
    layers: str | tuple[str, ...] = "up_blocks.*attn1.processor"   # cross-frame attention: the decoder's
    cross_period: tuple[float, float] = (0.0, 1.0)   # steps with cross-frame attention (fractions, both included)
    warp_period: tuple[float, float] = (0.0, 0.1)    # shape-aware fusion (both included)
    mask_period: tuple[float, float] = (0.5, 0.8)    # pixel-aware fusion (both excluded)
    ada_period: tuple[float, float] = (1.0, 1.0)     # AdaIN to the first frame (both included; (1, 1): none)
    style_update_freq: int = 10                 # keyframe cid's keys and values are "previous" if (cid-1) % freq == 0
    mask_strength: float = 0.5                  # pixel-aware fusion's weight inside the mask
    inner_strength: float = 0.9                 # its noise rescale inside flat regions
    smooth_boundary: bool = True                # rescale the noise only where the mask is flat
    pixel_fusion: bool = True                   # the fused pass (the official code's pixelfusion = True)
    color_preserve: bool = True                 # False: colour-correct each input to the first output
    shape_anchor: str = "first"                 # whose x0 shape-aware fusion warps: first (code), previous (paper)
    flow: Mapping[str, Any] | None = departs(None, official="GMFlow (models/gmflow_sintel-0c07dcb3.pth)", why=(
        "no GMFlow here: DIS by default, or RAFT from a local torchvision state dict (flow={method: raft, "
        "raft_weights: PATH}; options of videdit.video.flow.FlowConfig), the official occlusion test on its flow"))
    gradient_blend: bool = True                 # Poisson gradient blending of the frames between (video_blend -ps)
    propagate: str = "ebsynth"                  # the frames between: ebsynth (video_blend.py) or warp (faster)
    ebsynth: Mapping[str, Any] | None = None    # options of videdit.video.ebsynth.EbsynthConfig
    last_keyframe: bool = departs(True, official=False, why=(
        "the official blend drops frame 0 and the frames after the last 1 + k interval; videdit keeps every "
        "frame, so the clip's last frame is a keyframe (False: the frames after the last one warped from it)"))
    offload: bool = False                       # keep the anchors' keys and values in CPU memory

    def __post_init__(self):
        for name in ("interval", "style_update_freq"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise VideditError(f"{NAME} {name} must be a whole number of frames >= 1, got {getattr(self, name)!r}")
        for name in ("cross_period", "warp_period", "mask_period", "ada_period"):
            object.__setattr__(self, name, _period(getattr(self, name), name))
        for name in ("mask_strength", "inner_strength"):
            if not 0 <= getattr(self, name) <= 1:
                raise VideditError(f"{NAME} {name} must be in [0, 1], got {getattr(self, name)}")
        if self.shape_anchor not in ANCHORS:
            raise VideditError(f"{NAME} shape_anchor must be one of {list(ANCHORS)}, got {self.shape_anchor!r}")
        if self.propagate not in PROPAGATIONS:
            raise VideditError(f"{NAME} propagate must be one of {list(PROPAGATIONS)}, got {self.propagate!r}")
        patterns(NAME, "layers", self.layers)
        self.flow_config()
        self.ebsynth_config()

    def ebsynth_config(self) -> EbsynthConfig:
        return make_config(EbsynthConfig, dict(self.ebsynth or {}), f"{NAME} ebsynth")

    def flow_config(self) -> FlowConfig:
        return make_config(FlowConfig, {**DEFAULT_FLOW, **dict(self.flow or {})}, f"{NAME} flow")


def in_period(step: int, n_steps: int, period: tuple[float, float], inclusive: bool = True) -> bool:
    """Whether step ``step`` of ``n_steps`` is in ``period`` as the official code tests it:
    ``n * start <= step <= n * end`` (the controller's periods), or strictly inside (the
    pixel-aware fusion's ``mask_period``)."""
    lo, hi = n_steps * period[0], n_steps * period[1]
    return lo <= step <= hi if inclusive else lo < step < hi


def keyframes_in(window: Window, interval: int, last_keyframe: bool = True) -> list[int]:
    """Clip indices of the keyframes in ``window``: 0, 1 + k interval, and (``last_keyframe``) the clip's last frame."""
    last = window.indices[-1] if window.last and last_keyframe else None
    return [g for g in window.indices if g == 0 or (g - 1) % interval == 0 or g == last]


# ---- the official flow_utils.py, in torch ----

def flow_warp(x: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``x`` (B, C, H, W) sampled at ``p + flow(p)``, flow (B, 2, H, W) in pixels, zeros outside
    (``flow/flow_utils.py`` ``flow_warp``: grid_sample with align_corners=True)."""
    b, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    gx = 2 * (xs + flow[:, 0]) / max(w - 1, 1) - 1
    gy = 2 * (ys + flow[:, 1]) / max(h - 1, 1) - 1
    grid = torch.stack([gx, gy], dim=-1)                              # (B, H, W, 2)
    return F.grid_sample(x.to(flow.dtype), grid, mode=mode, padding_mode="zeros", align_corners=True)


def backward_occlusion(forward: torch.Tensor, backward: torch.Tensor, alpha: float = 0.01,
                       beta: float = 0.5) -> torch.Tensor:
    """Pixels of the second frame the first does not see, (B, 1, H, W) float: the official
    ``forward_backward_consistency_check`` (norms, not squared: ``|b + f(p + b)| > alpha
    (|f| + |b|) + beta``), flows (B, 2, H, W)."""
    mag = forward.norm(dim=1) + backward.norm(dim=1)                  # (B, H, W)
    diff = (backward + flow_warp(forward, backward)).norm(dim=1)
    return (diff > alpha * mag + beta).float()[:, None]


def soften(occlusion: torch.Tensor) -> torch.Tensor:
    """An occlusion mask (B, 1, H, W) dilated by a 9x9 max filter, blurred (Gaussian 9, sigma
    18) and added back, in [0, 1] (``rerender.py``: ``blur(F.max_pool2d(occ, 9, 1, 4))``)."""
    grown = F.max_pool2d(occlusion, kernel_size=9, stride=1, padding=4)
    return (gaussian_blur(grown, sigma=18.0, size=9) + occlusion).clamp(0, 1)


def latent_keep(occlusion: torch.Tensor, factor: int) -> torch.Tensor:
    """Where a fusion may act on the latent grid, (B, 1, h, w) in [0, 1]: one minus the largest
    value of the softened occlusion mask (:func:`soften`) over each ``factor`` x ``factor``
    cell, so a cell with any occluded pixel is left out (0) and cells near one are weighted down
    (``rerender.py``: ``1 - F.max_pool2d(blend_mask, kernel_size=8)`` for the shape-aware fusion,
    ``1 - F.max_pool2d(1 - blend_mask, kernel_size=8)`` of the visible mask for the pixel-aware)."""
    return 1 - F.max_pool2d(soften(occlusion), kernel_size=factor)


def latent_flow(flow: torch.Tensor, factor: int) -> torch.Tensor:
    """Pixel flow (B, 2, H, W) -> the latent grid's (``F.interpolate(flow / 8, scale_factor=1/8,
    mode='bilinear')``)."""
    return F.interpolate(flow / factor, scale_factor=1 / factor, mode="bilinear")


def flat_region(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, h, w): 1 where the mask's 3x3 gradient is zero (``src/img_util.py`` ``find_flat_region``)."""
    kx = mask.new_tensor([[-1, 0, 1]] * 3).view(1, 1, 3, 3)
    ky = kx.transpose(-1, -2)
    padded = F.pad(mask, (1, 1, 1, 1), mode="replicate")
    return ((F.conv2d(padded, kx).abs() + F.conv2d(padded, ky).abs()) == 0).float()


def mean_std(x: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of (B, C, h, w), as the controller's ``calc_mean_std`` (unbiased var + eps)."""
    flat = x.flatten(2)
    return flat.mean(-1)[..., None, None], (flat.var(-1) + eps).sqrt()[..., None, None]


def match_histograms(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each channel of ``image`` mapped onto ``reference`` 's by quantiles (scikit-image's ``match_histograms``)."""
    out = np.empty(image.shape, np.float64)
    for c in range(image.shape[-1]):
        src, ref = image[..., c].ravel(), reference[..., c].ravel()
        values, index, counts = np.unique(src, return_inverse=True, return_counts=True)
        ref_values, ref_counts = np.unique(ref, return_counts=True)
        quantiles = np.cumsum(counts) / src.size
        ref_quantiles = np.cumsum(ref_counts) / ref.size
        out[..., c] = np.interp(quantiles, ref_quantiles, ref_values)[index].reshape(image.shape[:-1])
    return out


def colour_correct(frame: np.ndarray, first_output: np.ndarray) -> np.ndarray:
    """uint8 RGB ``frame`` with the Lab histograms of ``first_output`` and its own lightness
    (``rerender.py`` ``apply_color_correction``: ``match_histograms`` in Lab, then a luminosity
    blend with the original, here its Lab L)."""
    lab = cv2.cvtColor(frame, cv2.COLOR_RGB2LAB)
    matched = np.clip(np.rint(match_histograms(lab, cv2.cvtColor(first_output, cv2.COLOR_RGB2LAB))), 0, 255)
    matched = matched.astype(np.uint8)
    matched[..., 0] = lab[..., 0]
    return cv2.cvtColor(matched, cv2.COLOR_LAB2RGB)


def histogram_blend(a: np.ndarray, b: np.ndarray, chosen: np.ndarray, wa: float, wb: float) -> np.ndarray:
    """``blender/histogram_blend.py`` ``blend``: ``a`` and ``b`` (uint8 RGB) normalised in Lab to a
    common mean and std, mixed by ``wa``, ``wb`` with the contrast kept, and given the Lab
    statistics of the per-pixel choice ``chosen``."""
    def lab(x):
        return cv2.cvtColor(x, cv2.COLOR_RGB2LAB).astype(np.float32)

    def to(x, mean, std):
        return (x - x.mean((0, 1))) * std / np.maximum(x.std((0, 1)), 1e-6) + mean

    t_mean, t_std = 0.5 * 256, 256 / 36
    la, lb, lc = lab(a), lab(b), lab(chosen)
    ab = (to(la, t_mean, t_std) * wa + to(lb, t_mean, t_std) * wb - t_mean) / 0.5 + t_mean
    ab = np.clip(np.rint(to(ab, lc.mean((0, 1)), lc.std((0, 1)))), 0, 255).astype(np.uint8)
    return cv2.cvtColor(ab, cv2.COLOR_LAB2RGB)


def _neumann_solve(rhs: np.ndarray, weight: float) -> np.ndarray:
    """u (H, W) with (I + weight L) u = rhs, L the grid's Laplacian with reflecting borders
    (G_x^T G_x + G_y^T G_y of forward differences): exact, by the FFT of the mirrored image."""
    h, w = rhs.shape
    ext = np.block([[rhs, rhs[:, ::-1]], [rhs[::-1], rhs[::-1, ::-1]]])          # (2H, 2W), period 2H x 2W
    ly = 2 - 2 * np.cos(np.pi * np.arange(2 * h) / h)
    lx = 2 - 2 * np.cos(np.pi * np.arange(2 * w) / w)
    return np.real(np.fft.ifft2(np.fft.fft2(ext) / (1 + weight * (ly[:, None] + lx[None, :]))))[:h, :w]


def poisson_fusion(blend: np.ndarray, a: np.ndarray, b: np.ndarray, choose_b: np.ndarray,
                   grad_weight: tuple[float, float, float] = (2.5, 0.5, 0.5)) -> np.ndarray:
    """``blender/poisson_fusion.py``: per Lab channel, the image closest to ``blend`` whose
    gradients are ``a`` 's (``b`` 's where ``choose_b``), the gradients weighted by
    ``grad_weight`` and clipped to +-100: the least-squares problem the official code hands to
    ``scipy.sparse.linalg.lsqr``, solved exactly here (:func:`_neumann_solve`). uint8 RGB in and out."""
    def lab(x):
        return cv2.cvtColor(x, cv2.COLOR_RGB2LAB).astype(np.float64)

    target, la, lb = lab(blend), lab(a), lab(b)
    m = choose_b.astype(np.float64)[..., None]                                # (H, W, 1)
    gx, gy = np.zeros_like(la), np.zeros_like(la)                            # forward differences, rows / columns
    gx[:-1] = (la[:-1] - la[1:]) * (1 - m[:-1]) + (lb[:-1] - lb[1:]) * m[:-1]
    gy[:, :-1] = (la[:, :-1] - la[:, 1:]) * (1 - m[:, :-1]) + (lb[:, :-1] - lb[:, 1:]) * m[:, :-1]
    gx, gy = np.clip(gx, -100, 100), np.clip(gy, -100, 100)
    out = np.empty_like(target)
    for c, wc in enumerate(grad_weight):
        div = (gx[..., c] - np.pad(gx[:-1, :, c], ((1, 0), (0, 0)))
               + gy[..., c] - np.pad(gy[:, :-1, c], ((0, 0), (1, 0))))
        out[..., c] = _neumann_solve(wc ** 2 * div + target[..., c], wc ** 2)  # G^T g; the normal equations
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


# ---- one pass ----

def _pixels(frame: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """uint8 (H, W, 3) -> (1, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frame)).to(like.device).permute(2, 0, 1)[None].float() / 127.5 - 1


def _vae_encode(model, x: torch.Tensor) -> torch.Tensor:
    return model.vae.encode(x.to(model.device, model.vae.dtype)).latent_dist.mean.float() * model.scaling_factor


def _vae_decode(model, z: torch.Tensor) -> torch.Tensor:
    return model.vae.decode((z / model.scaling_factor).to(model.device, model.vae.dtype)).sample.float()


@dataclass
class Fusion:
    """What the fused pass pulls the latent towards: ``xtrg`` (1, C, h, w), the weight ``mask``
    (1, 1, h, w) before ``mask_strength``, and the flat region where the noise is rescaled."""

    xtrg: torch.Tensor
    mask: torch.Tensor
    flat: torch.Tensor


class PeriodicCrossFrame(CrossFrameAttention):
    """Cross-frame attention inside ``period`` only; outside it the frame attends to itself
    (its keys and values are still kept for the frames that read them)."""

    def __init__(self, *args, period: tuple[float, float], n_steps: int, **kw):
        super().__init__(*args, **kw)
        self.period, self.n_steps = period, n_steps

    def qkv(self, call, q, k, v):
        if call.info.inverting or in_period(call.info.step, self.n_steps, self.period):
            return super().qkv(call, q, k, v)
        self.store.begin(call)
        frames = [self.clip_frames[f] for f in call.info.frames]
        ks, vs = call.split(k), call.split(v)                         # each (halves, nb, fb, heads, T, d)
        for j, g in enumerate(frames):
            self.store.put(call.layer, g, (ks[:, :, j], vs[:, :, j]))
        self.store.done(call.layer, frames)
        return q, k, v


class KeyframePass(StepCallback):
    """One keyframe's pass: records its x0 at every step and, for keyframes after the first,
    AdaIN and shape-aware fusion on x0 and (fused pass) pixel-aware fusion on the latent."""

    def __init__(self, module: Rerender, ctx: TemporalContext, frame: int, kind: str):
        self.module, self.ctx, self.frame, self.kind = module, ctx, frame, kind
        self.config = module.config
        self.eps: torch.Tensor | None = None      # (1, C, h, w) the step's noise, output branch
        self.x0: dict[int, torch.Tensor] = {}     # step -> (1, C, h, w) x0 as predicted, before the changes
        self.fused_steps: list[int] = []          # steps where pixel-aware fusion moved the latent
        self.shape_steps: list[int] = []          # steps where shape-aware fusion replaced x0
        self.ada_steps: list[int] = []
        self.changed: dict[int, torch.Tensor] = {}   # step -> x0 after AdaIN or shape-aware fusion
        self.fusion: Fusion | None = module.fusion if kind == "fused" else None

    def on_step_start(self, sctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        b, m = self.ctx.output_branch, self.module
        if self.kind == "fused" and m.fusion is not None and self.eps is not None and \
                in_period(sctx.step, sctx.n_steps, self.config.mask_period, inclusive=False):
            f = m.fusion
            w = self.config.mask_strength * f.mask                   # (1, 1, h, w)
            rescale = torch.maximum(1 - w, (1 - w ** 2).sqrt() * self.config.inner_strength)
            if self.config.smooth_boundary:
                rescale = (1 - w) * (1 - f.flat) + rescale * f.flat
            a = sctx.alpha
            noise = m.noise(sctx.step, f.xtrg)
            ref = a ** 0.5 * f.xtrg + (1 - a) ** 0.5 * noise           # q_sample(xtrg, t)
            d = (1 - a) ** 0.5 * self.eps                            # the noise term of the latent (dir_xt)
            y = x[b].float()                                         # (1, C, h, w)
            x = x.clone()
            x[b] = (ref * w + (1 - w) * (y - d) + rescale * d).to(x.dtype)
            self.fused_steps.append(sctx.step)
        return x

    def on_noise(self, sctx: StepContext, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        b = self.ctx.output_branch
        self.eps = predict_x0_eps(z[b].float(), out[b].float(), sctx.alpha, self.ctx.model.prediction_type)[1]
        return out

    def on_step_end(self, sctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        b, m, i = self.ctx.output_branch, self.module, sctx.step
        x0 = clean_latent(x[b].float(), self.eps, sctx.alpha_prev)   # (1, C, h, w) the step's pred_x0
        # kept as predicted, before the changes (the controller's updatex0 copies it first)
        self.x0[i] = x0.detach().to("cpu" if self.config.offload else x0.device).clone()
        changed = False
        if self.kind != "first":   # the controller's restorex0 (keepx0)
            if in_period(i, sctx.n_steps, self.config.ada_period) and i in m.first_stats:
                mean, std = (t.to(x0) for t in m.first_stats[i])
                x0 = F.instance_norm(x0) * std + mean
                changed = True
                self.ada_steps.append(i)
            anchor = m.shape_anchor()
            if in_period(i, sctx.n_steps, self.config.warp_period) and anchor is not None and i in anchor["x0"]:
                flow, mask = m.shape_warp(self.frame, anchor, x0)
                warped = flow_warp(anchor["x0"][i].to(x0), flow, mode="nearest")
                x0 = warped * mask + (1 - mask) * x0
                changed = True
                self.shape_steps.append(i)
        if not changed:
            return x
        self.changed[i] = x0.detach().cpu().clone()
        x = x.clone()
        x[b] = renoise(x0, self.eps, sctx.alpha_prev).to(x.dtype)
        return x


@register_temporal
class Rerender(TemporalModule):
    """Rerender-A-Video: key-frame translation (cross-frame attention, shape- and pixel-aware fusion, AdaIN)
    and the Ebsynth stage for the frames between."""

    name = NAME
    config_class = RerenderConfig
    makes_frames = True
    edits_in_passes = True
    reference = ("Yang et al. 2023, Rerender A Video (SIGGRAPH Asia); williamyang1991/Rerender_A_Video rerender.py, "
                 "src/controller.py, src/ddim_v_hacked.py, flow/flow_utils.py, video_blend.py, blender/guide.py; "
                 "Jamriska et al. 2019, jamriska/ebsynth")

    def __init__(self, config: RerenderConfig):
        super().__init__(config)
        self.flow = config.flow_config()
        self.anchors: dict = {}             # keys and values of the first frame and the previous keyframe
        self.first: dict | None = None      # {"frame", "source", "result", "x0"}: clip frame 0
        self.previous: dict | None = None   # the same for the latest keyframe
        self.style_frame = 0                # the keyframe whose keys and values are the attention's "previous"
        self.first_stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}   # step -> first x0's mean, std
        self.results: dict[int, np.ndarray] = {}   # keyframe -> its final output (H, W, 3) uint8
        self.sources: dict[int, np.ndarray] = {}   # keyframe -> its source frame at the model size
        self.fusion: Fusion | None = None   # the current keyframe's pixel-aware fusion target
        self.direct: np.ndarray | None = None      # the current keyframe's direct pass result
        self.queue: list[tuple[int, str]] = []
        self.queued_for: int | None = None         # the window start the queue was made for
        self.current: tuple[int, str] | None = None   # (keyframe, pass) being run
        self.current_source: np.ndarray | None = None
        self.ctx: TemporalContext | None = None
        self.passes: list[KeyframePass] = []       # this window's passes (their steps, for tests and reports)
        self._flows: dict = {}
        self._ahead: dict = {}   # (a, b) -> the pair's flows started in the flow thread at b's first pass
        self._noise: dict[int, torch.Tensor] = {}
        self._span: dict | None = None             # finish_clip's carried choice mask
        self._ebsynth = config.ebsynth_config()
        self._fwd: EbsynthChain | None = None      # the forward chain of the current span
        self._bwd: dict[int, tuple] = {}           # frame -> the backward chain's synthesis and error
        self._bwd_key: tuple[int, int] | None = None   # (keyframe, window start) of _bwd
        self._boundary: dict[int, EbsynthChain] = {}   # keyframe -> its backward chain at its window's start
        self._exemplars: dict[int, Exemplar] = {}  # the latest keyframes' Ebsynth sources
        self._between_ahead: dict = {}   # (x, y) -> (flows of source x -> y started ahead, source x, source y)
        self._last_pair: tuple | None = None       # (x, y, source x, source y, flows) read last
        self.syntheses = 0                         # Ebsynth runs (for tests and reports)
        self.chose_later: dict[int, float] = {}    # frame between -> share of pixels from the later keyframe

    @property
    def second_pass(self) -> bool:
        return True

    # ---- keyframes, one pass at a time ----

    def frames_to_edit(self, window: Window) -> list[int]:
        keys = keyframes_in(window, self.config.interval, self.config.last_keyframe)
        if not keys:
            raise VideditError(f"{NAME}: window of frames {window.start}..{window.indices[-1]} holds no keyframe "
                               f"(every {self.config.interval} frames); edit in windows of at least "
                               f"{self.config.interval} frames (--window)")
        return [g - window.start for g in keys]

    def next_pass(self, window: Window) -> tuple[int, ...] | None:
        if self.queued_for != window.start:
            self.queued_for, self.queue, self.passes = window.start, [], []
            for g in keyframes_in(window, self.config.interval, self.config.last_keyframe):
                if g == 0:
                    self.queue.append((0, "first"))
                else:
                    self.queue += [(g, "direct")] + ([(g, "fused")] if self.config.pixel_fusion else [])
        if not self.queue:
            self.current = None
            return None
        self.current = self.queue.pop(0)
        return (self.current[0] - window.start,)

    def plan(self, window: Window, ctx: TemporalContext) -> TemporalPlan:
        window.source(NAME)
        if self.current is None or ctx.denoised(window) != [self.current[0]]:
            raise VideditError(f"{NAME} edits its keyframes one pass at a time; edit through edit_frames or edit_video")
        g, kind = self.current
        if kind != "first" and self.first is None:
            raise VideditError(f"{NAME}: keyframe {g} needs clip frame 0 translated first; edit the clip from its "
                               f"start")
        self.ctx, self.current_source = ctx, window.frames[g - window.start]
        if kind == "direct":   # the pairs its passes read, estimated while its first steps denoise
            for anchor in (self.shape_anchor(), *((self.previous, self.first) if self.config.pixel_fusion else ())):
                if (anchor["frame"], g) not in self._ahead:
                    self._ahead[anchor["frame"], g] = compute_flows_ahead(
                        np.stack([anchor["source"], self.current_source]), self.flow, device=ctx.model.device)
        if kind == "fused":
            self.fusion = self._fusion(window, g, ctx)
        layers = choose_layers(ctx.model.unet, patterns(NAME, "layers", self.config.layers), NAME, "layers",
                               cross=False)
        prev = self.style_frame

        def anchors(f):
            return (0,) if kind == "first" else (0, prev)

        last_pass = kind == "first" or kind == "fused" or not self.config.pixel_fusion
        carry = {g} if last_pass and self.updates_style(g) else set()
        store = AnchorStore([g], anchors, carry, self.anchors, self.config.offload, final=False)
        module = PeriodicCrossFrame(layers, anchors, [g], store, what=NAME, source_branch=ctx.source_branch,
                                    period=self.config.cross_period, n_steps=len(ctx.schedule))
        callback = KeyframePass(self, ctx, g, kind)
        self.passes.append(callback)
        callbacks: list[StepCallback] = [callback]
        if kind != "first" and not self.config.color_preserve:
            callbacks.insert(0, ColourCorrection(self, ctx, window, g))
        return TemporalPlan(modules=[module], callbacks=callbacks)

    def pass_done(self, window: Window, edited: tuple[int, ...], frames: np.ndarray, latents: torch.Tensor) -> None:
        g, kind = self.current
        run = self.passes[-1]
        source = window.frames[g - window.start]
        if kind == "direct" and self.config.pixel_fusion:
            self.direct = frames[0].copy()
            return
        record = {"frame": g, "source": source.copy(), "result": frames[0].copy(), "x0": run.x0}
        if kind == "first":
            self.first = record
            self.first_stats = {i: mean_std(x0) for i, x0 in run.x0.items()}
        self.previous = record
        if self.updates_style(g):
            self.style_frame = g
        self.results[g], self.sources[g] = frames[0].copy(), source.copy()
        self.fusion, self.direct = None, None

    def updates_style(self, g: int) -> bool:
        """Whether keyframe g's keys and values become the later keyframes' "previous"
        (``rerender.py``: ``'updatestyle'`` where ``i % style_update_freq == 0``, ``i = cid - 1``)."""
        return g == 0 or (g - 1) % self.config.style_update_freq == 0

    # ---- what the fusions read ----

    def shape_anchor(self) -> dict | None:
        return self.first if self.config.shape_anchor == "first" else self.previous

    def pair(self, a: int, b: int, source_a: np.ndarray, source_b: np.ndarray, like: torch.Tensor):
        """Flow from frame ``b`` back to ``a`` (B, 2, H, W) and ``b`` 's pixels ``a`` does not see (B, 1, H, W)."""
        key = (a, b)
        if key not in self._flows:
            ahead = self._ahead.pop(key, None)
            flows: Flows = ahead.result() if ahead is not None else compute_flows(
                np.stack([source_a, source_b]), self.flow, device=like.device)
            self._ahead = {k: v for k, v in self._ahead.items() if k[1] == b}
            fwd = torch.from_numpy(flows.forward[0]).permute(2, 0, 1)[None]    # (1, 2, H, W) a -> b
            bwd = torch.from_numpy(flows.backward[0]).permute(2, 0, 1)[None]   # (1, 2, H, W) b -> a
            self._flows = {k: v for k, v in self._flows.items() if k[1] == b}   # this keyframe's pairs only
            self._flows[key] = (bwd, backward_occlusion(fwd, bwd))
        bwd, occ = self._flows[key]
        return bwd.to(like.device), occ.to(like.device)

    def shape_warp(self, g: int, anchor: dict, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The latent flow from keyframe ``g`` back to ``anchor`` and where its x0 replaces g's."""
        bwd, occ = self.pair(anchor["frame"], g, anchor["source"], self.current_source, like)
        factor = bwd.shape[-1] // like.shape[-1]
        return latent_flow(bwd, factor), latent_keep(occ, factor)     # (1, 2, h, w), (1, 1, h, w)

    def noise(self, step: int, like: torch.Tensor) -> torch.Tensor:
        """The noise of q_sample(xtrg) at ``step``: seeded by the edit's seed and the step, the
        same for every keyframe (the official code seeds before every keyframe)."""
        if step not in self._noise:
            g = torch.Generator(device="cpu").manual_seed(int(self.ctx.seed) * 1009 + step)
            self._noise[step] = torch.randn(like.shape, generator=g, dtype=torch.float32)
        return self._noise[step].to(like.device)

    def _fusion(self, window: Window, g: int, ctx: TemporalContext) -> Fusion:
        """Pixel-aware fusion's target for keyframe ``g`` (``rerender.py``, the pixelfusion branch)."""
        model, source = ctx.model, window.frames[g - window.start]
        like = ctx.inversion.source
        direct = _pixels(self.direct, like)                              # (1, 3, H, W)
        blended, occs = direct, []
        for anchor in (self.previous, self.first):                       # the first frame's pixels win
            bwd, occ = self.pair(anchor["frame"], g, anchor["source"], source, like)
            mask = soften(occ)
            blended = (1 - mask) * flow_warp(_pixels(anchor["result"], like), bwd) + mask * blended
            occs.append(occ)
        both = occs[0] * occs[1]                                         # occluded in both
        xtrg = _vae_encode(model, blended)                               # (1, C, h, w)
        xtrg_rec = _vae_encode(model, _vae_decode(model, xtrg))
        overshoot = (_vae_decode(model, xtrg + (xtrg - xtrg_rec)) - blended).abs().mean(1, keepdim=True) > 0.25
        factor = blended.shape[-1] // xtrg.shape[-1]
        mask_x = F.max_pool2d((F.interpolate(overshoot.float(), scale_factor=1 / factor, mode="bilinear") > 0).float(),
                              kernel_size=3, stride=1, padding=1)
        mask = latent_keep(both, factor)                                 # (1, 1, h, w)
        xtrg = (xtrg + (1 - mask_x) * (xtrg - xtrg_rec)) * mask
        flat = flat_region(mask) if self.config.smooth_boundary else torch.ones_like(mask)
        return Fusion(xtrg=xtrg, mask=mask, flat=flat)

    # ---- the frames between keyframes ----

    def finish_window(self, window, frames, latents):
        """First pass: where a keyframe's span reaches back into the window before, run its
        backward Ebsynth chain over this window's frames and keep its state at the window's
        first frame, for the second pass over the window before (which cannot see these frames)."""
        if self.config.propagate == "ebsynth":
            keys = sorted(self.results)
            spans = [b for b in keyframes_in(window, self.config.interval, self.config.last_keyframe)
                     if (i := keys.index(b)) > 0 and keys[i - 1] < window.start - 1]   # reaching back
            self._start_between_flows(window, [(g + 1, g) for b in spans for g in range(b - 1, window.start - 1, -1)])
            for b in spans:
                chain = self._chain_start(b)
                for g in range(b - 1, window.start - 1, -1):
                    chain = self._chain_step(chain, g, window.frames[g - window.start])[0]
                self._boundary[b] = chain
        return frames

    def finish_clip(self, window: Window) -> np.ndarray:
        """The window's output frames: keyframes' results, the frames between propagated (module doc)."""
        keys = sorted(self.results)
        out = window.frames.copy()
        self._start_between_flows(window, self._between_pairs(window, keys))
        for g in window.indices:
            source = window.frames[g - window.start]
            if g in self.results:
                out[g - window.start] = self.results[g]
                continue
            a, b = self._neighbours(keys, g)
            if self.config.propagate == "warp":
                ka = self._warp_key(g, source, a) if a is not None else None
                kb = self._warp_key(g, source, b) if b is not None else None
            else:
                ka = self._forward(g, source, a) if a is not None else None
                kb = self._backward(window, g, b) if b is not None else None
            out[g - window.start] = self._between(g, source, a, b, ka, kb)
        self._between_ahead, self._last_pair = {}, None
        return out

    @staticmethod
    def _neighbours(keys: list[int], g: int) -> tuple[int | None, int | None]:
        """The keyframes before and after frame ``g`` (None at the clip's ends)."""
        i = bisect.bisect_left(keys, g)
        return (keys[i - 1] if i > 0 else None), (keys[i] if i < len(keys) else None)

    def _between_pairs(self, window: Window, keys: list[int]) -> list[tuple[int, int]]:
        """The (x, y) source flows finish_clip reads, in the order it reads them: per frame between, the
        forward chain's step from g - 1 (which the span's carried choice reads again), and at a span's
        first frame here the backward chain's steps from its later keyframe (or the kept state at the
        window's end) down to it; with propagate="warp", each keyframe's warp onto the frame and the
        step from g - 1 that carries the span's choice."""
        end, pairs, spans = window.start + len(window.frames), [], set()
        for g in window.indices:
            if g in self.results:
                continue
            a, b = self._neighbours(keys, g)
            if self.config.propagate == "warp":
                pairs += [(g, k) for k in (a, b) if k is not None]
                pairs += [(g - 1, g)] if a is not None and b is not None and g - 1 > a else []   # the carried choice
                continue
            if a is not None:
                pairs.append((g - 1, g))
            if b is not None and b not in spans:
                spans.add(b)
                pairs += [(f + 1, f) for f in range(min(b, end) - 1, max(g, window.start) - 1, -1)]
        return pairs

    def _start_between_flows(self, window: Window, pairs: list[tuple[int, int]]) -> None:
        """Start the source flows of ``pairs`` in the flow thread, so that they are estimated while the
        Ebsynth syntheses (on the model's device) run; a pair whose frame is not at hand here (a chain
        carried from another window) is estimated where it is read."""
        end = window.start + len(window.frames)
        chains = [c for c in (self._fwd, *self._boundary.values()) if c is not None]

        def source(i: int) -> np.ndarray | None:
            if window.start <= i < end:
                return window.frames[i - window.start]
            return next((c.source for c in chains if c.frame == i), self.sources.get(i))

        for x, y in pairs:
            sx, sy = source(x), source(y)
            if sx is not None and sy is not None and (x, y) not in self._between_ahead:
                self._between_ahead[x, y] = (compute_flows_ahead(np.stack([sx, sy]), self.flow), sx, sy)

    def _source_flows(self, x: int, y: int, source_x: np.ndarray, source_y: np.ndarray) -> Flows:
        """Flows of source frame x -> y (two frames): started ahead where finish_clip named the pair and
        the frames are these, else estimated here; the pair read last is kept (the span's carried
        choice reads the forward chain's again)."""
        def same(sx, sy):
            return np.array_equal(sx, source_x) and np.array_equal(sy, source_y)

        if self._last_pair is not None and self._last_pair[:2] == (x, y) and same(*self._last_pair[2:4]):
            return self._last_pair[4]
        ahead = self._between_ahead.pop((x, y), None)
        if ahead is not None and same(*ahead[1:]):
            flows = ahead[0].result()
        else:
            flows = compute_flows(np.stack([source_x, source_y]), self.flow)
        self._last_pair = (x, y, source_x, source_y, flows)
        return flows

    # the Ebsynth stage: video_blend.py process_one_sequence, one chain per keyframe and direction

    def _chain_start(self, key: int) -> EbsynthChain:
        h, w = self.sources[key].shape[:2]
        return EbsynthChain(key, key, self.sources[key], self.results[key], positional_ramp(h, w))

    def _chain_step(self, chain: EbsynthChain, g: int, source: np.ndarray):
        """The chain's next frame g (next to chain.frame): its temporal and positional guides
        warped from chain.frame along the flow (nearest, the occluded pixels inpainted:
        ``TemporalGuide``, ``PositionalGuide``), then Ebsynth from the keyframe with the colour,
        edge, temporal and positional guides. -> (the chain at g, synthesis (H, W, 3) uint8, error (H, W))."""
        flows = self._source_flows(chain.frame, g, chain.source, source)
        fwd = torch.from_numpy(flows.forward[0]).permute(2, 0, 1)[None]          # (1, 2, H, W) chain.frame -> g
        bwd = torch.from_numpy(flows.backward[0]).permute(2, 0, 1)[None]         # (1, 2, H, W) g -> chain.frame
        hole = (backward_occlusion(fwd, bwd)[0, 0].numpy() * 255).astype(np.uint8)

        def carry(image):
            warped = flow_warp(torch.from_numpy(image).permute(2, 0, 1)[None].float(), bwd, mode="nearest")
            warped = warped[0].permute(1, 2, 0).numpy().astype(np.uint8)
            return cv2.inpaint(warped, hole, self._ebsynth.inpaint_radius, cv2.INPAINT_TELEA) if hole.any() else warped

        temporal, position = carry(chain.output), carry(chain.position)
        image, error = self._exemplar(chain.key).synthesize([source, edges(source), temporal, position])
        self.syntheses += 1
        return EbsynthChain(chain.key, g, source.copy(), image, position), image, error

    def _exemplar(self, k: int) -> Exemplar:
        """Keyframe k's Ebsynth source: its result as the style, its source frame, edges, result
        and the positional ramp as the guides (``process_one_sequence``), kept for its two chains."""
        if k not in self._exemplars:
            key_source, key_result = self.sources[k], self.results[k]
            ramp = positional_ramp(*key_source.shape[:2])
            device = self.ctx.model.device if self.ctx is not None else "cpu"
            guides = [key_source, edges(key_source), key_result, ramp]
            self._exemplars = {j: e for j, e in self._exemplars.items() if j > k - 2 * self.config.interval}
            self._exemplars[k] = Exemplar(key_result, guides, self._ebsynth.guide_weights, self._ebsynth, device)
        return self._exemplars[k]

    def _forward(self, g: int, source: np.ndarray, a: int) -> tuple[np.ndarray, np.ndarray]:
        """Keyframe a's chain carried forward to g (the frames are visited in order)."""
        chain = self._fwd if self._fwd is not None and self._fwd.key == a else self._chain_start(a)
        if chain.frame != g - 1:
            raise VideditError(f"{NAME}: the frames between keyframes are made in order; frame {g} came after "
                               f"{chain.frame}")
        self._fwd, image, error = self._chain_step(chain, g, source)
        return image, error

    def _backward(self, window: Window, g: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Keyframe b's chain carried back to g: run once per span and window, from b or from the
        state kept at the next window's first frame (:meth:`finish_window`)."""
        if g not in self._bwd or self._bwd_key != (b, window.start):
            end = window.start + len(window.frames)
            if b >= end and b not in self._boundary:
                raise VideditError(f"{NAME}: keyframe {b}'s Ebsynth chain was not kept from the first pass; edit the "
                                   f"clip through edit_video, in the same windows for both passes")
            chain = self._chain_start(b) if b < end else self._boundary.pop(b)
            self._bwd, self._bwd_key = {}, (b, window.start)
            for f in range(chain.frame - 1, max(g, window.start) - 1, -1):
                chain, image, error = self._chain_step(chain, f, window.frames[f - window.start])
                self._bwd[f] = (image, error)
        return self._bwd[g]

    def _warp_key(self, g: int, source: np.ndarray, a: int) -> tuple[np.ndarray, np.ndarray]:
        """``propagate="warp"``: keyframe ``a`` 's result warped onto frame g (H, W, 3) uint8 and its error (H, W)."""
        flows = self._source_flows(g, a, source, self.sources[a])
        flow = torch.from_numpy(flows.forward[0]).permute(2, 0, 1)[None]              # (1, 2, H, W) g -> a
        result = flow_warp(torch.from_numpy(self.results[a]).permute(2, 0, 1)[None].float(), flow)[0]
        seen = flow_warp(torch.from_numpy(self.sources[a]).permute(2, 0, 1)[None].float(), flow)[0]
        error = (seen - torch.from_numpy(source).permute(2, 0, 1).float()).abs().mean(0)   # (H, W)
        error = gaussian_blur(error[None, None], sigma=1.0, size=5)[0, 0]
        error[torch.from_numpy(flows.occlusion[0])] = float("inf")
        image = np.clip(np.rint(result.permute(1, 2, 0).numpy()), 0, 255).astype(np.uint8)
        return image, error.numpy()

    def _between(self, g: int, source: np.ndarray, a: int | None, b: int | None, ka, kb) -> np.ndarray:
        """Frame g from keyframes a < g < b, given each one's propagation and error ``ka``, ``kb``:
        per pixel the one with the smaller weighted error (``g_error_mask``), the later
        keyframe's choice carried along the flow, histogram blended (``process_seq``)."""
        if a is None or b is None:
            return (ka if b is None else kb)[0]
        ua, da = ka
        ub, db = kb
        w1 = (g - a - 1) / max(b - a - 1, 1)                              # i / (interval - 1)
        w2 = 1 - w1
        if w1 == 0 or w2 == 0:                                            # at a keyframe's side: that keyframe
            choose_b = np.full(da.shape, w1 != 0)
        else:
            choose_b = ~(w1 * da < w2 * db)
        span = self._span
        if span is not None and span["keys"] == (a, b) and span["frame"] == g - 1:
            flows = self._source_flows(g - 1, g, span["source"], source)
            bwd = torch.from_numpy(flows.backward[0]).permute(2, 0, 1)[None]          # (1, 2, H, W) g -> g-1
            carried = flow_warp(torch.from_numpy(span["mask"]).float()[None, None], bwd, mode="nearest")[0, 0]
            choose_b |= carried.numpy() > 0.5
        self._span = {"keys": (a, b), "frame": g, "source": source.copy(), "mask": choose_b.copy()}
        self.chose_later[g] = float(choose_b.mean())
        chosen = np.where(choose_b[..., None], ub, ua)
        blended = histogram_blend(ua, ub, chosen, 1 - w1, 1 - w2)
        return poisson_fusion(blended, ua, ub, choose_b) if self.config.gradient_blend else blended


@dataclass
class EbsynthChain:
    """Where one keyframe's Ebsynth chain stands: at ``frame`` (its ``source``), its synthesis
    ``output`` (the keyframe's result at the keyframe) and positional guide ``position``, each
    (H, W, 3) uint8; the next frame's temporal and positional guides are these, warped."""

    key: int
    frame: int
    source: np.ndarray
    output: np.ndarray
    position: np.ndarray


class ColourCorrection(StepCallback):
    """``color_preserve=False``: at the pass's first step the keyframe's noised source latent is
    moved to its colour-corrected frame's (the same noise: ``x + sqrt(a) (z0' - z0)``)."""

    def __init__(self, module: Rerender, ctx: TemporalContext, window: Window, g: int):
        self.module, self.ctx, self.window, self.g = module, ctx, window, g
        self.done = False

    def on_step_start(self, sctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        if self.done:
            return x
        self.done = True
        frame = colour_correct(self.window.frames[self.g - self.window.start], self.module.first["result"])
        z0 = self.ctx.inversion.source.float()                          # (1, C, h, w)
        z0c = self.ctx.model.encode_images(frame[None]).float().to(z0)
        x = x.clone()
        b = self.ctx.output_branch
        x[b] = (x[b].float() + sctx.alpha ** 0.5 * (z0c - z0)).to(x.dtype)
        return x
