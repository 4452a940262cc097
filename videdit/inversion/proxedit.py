"""ProxEdit: negative-prompt inversion with proximal guidance (Han et al. 2024, "ProxEdit:
Improving Tuning-Free Real Image Editing with Proximal Guidance", WACV; arXiv:2306.05414).
Defaults follow the official code, github.com/phymhan/prompt-to-prompt: the proximal step of
``ptp_utils.diffusion_step`` and the ProxNPI examples of ``run_npi.py`` (l0, quantile 0.75,
inversion guidance at recon_lr 1 below timestep 400, dilation 1, guidance 7.5, 50 steps; the
README's example and ``main``'s default take quantile 0.7).

The inversion is NPI's (guidance-1 DDIM under the source prompt; the source prompt replaces
the unconditional embedding while editing). The edit's guidance term is regularised by a
proximal operator: with d = eps(c_target) - eps(c_source) and a threshold lambda,

    eps = eps(c_source) + w * prox(d),
    "l0":  prox(d) = d - clamp(d, -lambda, lambda) = sign(d) * max(|d| - lambda, 0)   (soft shrinkage)
    "l1":  the l0 value s, then s - lambda where s > 0, and after that s + lambda where s < 0

so that small, diffuse differences (which change the whole image) are dropped and only the
strong, localised ones edit. The names and both operators are the reference's: its "l1"
shifts the shrunk value by lambda once more, in two passes, so that a positive s below lambda
goes negative in the first pass and back up in the second (d in (lambda, 2 lambda) keeps
d - lambda, d >= 2 lambda gives d - 2 lambda) while every negative s moves up by lambda (d in
(-2 lambda, -lambda) changes sign).

lambda is the ``quantile`` of |d| over the whole UNet batch, as ``score_delta.abs().quantile``
takes it: for one frame, every branch the editor runs, whose source branch (source prompt,
source-prompt uncond) has d = 0. Half the entries being zero, lambda is about the
(2q - 1) quantile of the target's |d|: at q = 0.75 soft shrinkage keeps half of a Gaussian
difference (|d| above its median), at q = 0.7 60%. An editor without a source branch gets the
zero half added, so lambda is the same. Frames are thresholded one by one.

Below timestep ``recon_t`` the step is corrected where the edit is off: the reference's mask
is |prox(d)| > lambda (for l0, |d| > 2 lambda), grown by ``dilate`` latent pixels, per
channel; where it is 0, *reconstruction guidance* moves the predicted x0 towards the source
latent z0 and *inversion guidance* moves the latent after the step towards the inversion
trajectory, each by ``recon_lr``. Reconstruction guidance is applied to the latent after the
step as sqrt(alpha_prev) * recon_lr * mask * (x0 - z0), which is exactly the DDIM step with the
corrected x0 (the reference's ``DDIMSchedulerDev.step``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from videdit.core.ddim import predict_x0_eps
from videdit.core.loop import StepCallback, StepContext
from videdit.errors import VideditError
from videdit.inversion.ddim import DDIMInversionConfig, ddim_inversion
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, Replay, ReplayContext, register_inversion

PROX = ("l0", "l1")


@dataclass(frozen=True)
class ProxEditConfig:
    prox: str = "l0"                # "l0" (soft shrinkage by lambda) or "l1" (the reference's second shift)
    quantile: float = 0.75          # lambda = this quantile of |d| over a frame's branches ...
    threshold: float = 0.0          # ... or, when > 0, this fixed lambda
    reconstruction_guidance: bool = False  # pull x0 towards the source z0 where the edit is off
    inversion_guidance: bool = True        # pull latents towards the inversion trajectory there
    recon_lr: float = 1.0           # strength of both pulls
    recon_t: int = 400              # ... applied at timesteps below this
    dilate: int = 1                 # radius (latent pixels) the edit mask grows by

    def __post_init__(self):
        if self.prox not in PROX:
            raise VideditError(f"proxedit prox must be one of {PROX} (the reference's names), got {self.prox!r}")
        if not 0 <= self.quantile < 1:
            raise VideditError(f"proxedit quantile must be in [0, 1), got {self.quantile}")
        if self.threshold < 0:
            raise VideditError(f"proxedit threshold must be >= 0 (0 = use the quantile), got {self.threshold}")
        if not 0 <= self.recon_lr <= 1:
            raise VideditError(f"proxedit recon_lr must be in [0, 1], got {self.recon_lr}")
        if self.recon_t < 0:
            raise VideditError(f"proxedit recon_t must be a timestep >= 0, got {self.recon_t}")
        if self.dilate < 0:
            raise VideditError(f"proxedit dilate must be >= 0 latent pixels, got {self.dilate}")


def proximal_threshold(delta: torch.Tensor, config: ProxEditConfig, zero_half: bool = False) -> torch.Tensor:
    """lambda per frame for d (nb, fb, C, h, w) -> (1, fb, 1, 1, 1): the fixed threshold, or
    the quantile of |d| over the frame's branches, with as many zeros again as one branch has
    where ``zero_half`` (the reference's source half, for an editor that runs none)."""
    if config.threshold > 0:
        return delta.new_full((1, delta.shape[1], 1, 1, 1), config.threshold)
    mag = delta.abs().transpose(0, 1).flatten(1)                  # (fb, nb*C*h*w)
    if zero_half:
        mag = torch.cat([mag, mag.new_zeros(mag.shape[0], mag.shape[1] // delta.shape[0])], dim=1)
    return mag.quantile(config.quantile, dim=1).view(1, -1, 1, 1, 1)


def proximal(delta: torch.Tensor, lam: torch.Tensor, prox: str) -> torch.Tensor:
    """prox(d) of ``ptp_utils.diffusion_step`` for d (nb, fb, C, h, w) and lambda (1, fb, 1, 1, 1)."""
    out = delta - torch.minimum(torch.maximum(delta, -lam), lam)  # soft shrinkage (the reference's d -= d.clamp)
    if prox == "l1":       # two passes, the second reading the first's output, as the reference does
        out = torch.where(out > 0, out - lam, out)
        out = torch.where(out < 0, out + lam, out)
    return out


ROUNDING = 1e-5   # |cond - uncond| below this is float32 rounding, not an edit


class ProximalGuidance(StepCallback):
    """Replaces CFG's difference by its proximal version; optionally corrects the step
    where the edit is off (reconstruction and inversion guidance)."""

    def __init__(self, config: ProxEditConfig, inv: Inversion, prediction_type: str, zero_half: bool):
        self.config = config
        self.inv = inv
        self.prediction_type = prediction_type
        self.zero_half = zero_half   # no source branch: add the reference's zero source half to lambda's quantile
        self.keep = None             # (nb, F, C, h, w): 1 where the edit is off (dilated), this step
        self.keep_step = -1
        self.x0 = None

    def _correcting(self, ctx: StepContext) -> bool:
        c = self.config
        return (c.reconstruction_guidance or c.inversion_guidance) and c.recon_lr > 0 and ctx.timestep < c.recon_t

    def on_guidance(self, ctx, frames, uncond, cond):
        delta = cond - uncond                                            # (nb, fb, C, h, w)
        lam = proximal_threshold(delta, self.config, self.zero_half)     # (1, fb, 1, 1, 1)
        delta = proximal(delta, lam, self.config.prox)
        if self._correcting(ctx):
            # the reference's mask_edit; a difference within float32 rounding (an editor whose two halves
            # run different attention, at target = source) is none, as the reference's exact zeros are
            edit = ((delta.abs() > lam) & (delta.abs() > ROUNDING)).float()
            if self.config.dilate > 0:
                r = self.config.dilate
                edit = F.max_pool2d(edit.flatten(0, 1), 2 * r + 1, stride=1, padding=r).view_as(edit)
            if self.keep_step != ctx.step:
                nb, n_frames = uncond.shape[0], self.inv.trajectory.shape[1]
                self.keep = uncond.new_ones(nb, n_frames, *uncond.shape[2:])  # (nb, F, C, h, w)
                self.keep_step = ctx.step
            self.keep[:, list(frames)] = 1 - edit
        return uncond, uncond + delta

    def on_noise(self, ctx, x, out):
        if self._correcting(ctx) and self.config.reconstruction_guidance:
            self.x0 = predict_x0_eps(x, out, ctx.alpha, self.prediction_type)[0]  # (nb, F, C, h, w)
        return out

    def on_step_end(self, ctx, x):
        if not self._correcting(ctx) or self.keep_step != ctx.step:
            return x  # unguided step: no difference, no mask
        lr, keep = self.config.recon_lr, self.keep.to(x)
        if self.config.reconstruction_guidance and self.x0 is not None:
            z0 = self.inv.source.to(x)
            x = x - ctx.alpha_prev ** 0.5 * lr * keep * (self.x0 - z0)
        if self.config.inversion_guidance:
            target = self.inv.trajectory[ctx.step + 1].to(x)  # the source latent this step lands on
            x = x - lr * keep * (x - target)
        self.x0 = None
        return x


def proximal_replay(inv: Inversion, ctx: ReplayContext, config: ProxEditConfig) -> Replay:
    """Replay: NPI's source-prompt uncond plus proximal guidance."""
    guidance = ProximalGuidance(config, inv, ctx.prediction_type, zero_half=ctx.source_branch is None)
    return Replay(uncond=ctx.source_cond, callbacks=(guidance,))


@register_inversion("proxedit", ProxEditConfig, replay=proximal_replay,
                    reference="Han et al. 2024, ProxEdit: Improving Tuning-Free Real Image Editing with Proximal "
                              "Guidance; github.com/phymhan/prompt-to-prompt (ptp_utils.diffusion_step, run_npi.py)",
                    steps=50, guidance=7.5)
def proxedit_inversion(inp: InversionInputs, config: ProxEditConfig) -> Inversion:
    """ProxEdit (Han et al. 2024): negative-prompt inversion, edited with proximal (thresholded) guidance."""
    return dataclasses.replace(ddim_inversion(inp, DDIMInversionConfig(guidance=1.0)), method="proxedit")
