"""ProxEdit: negative-prompt inversion with proximal guidance (Han et al. 2024, "ProxEdit:
Improving Tuning-Free Real Image Editing with Proximal Guidance", WACV; arXiv:2306.05414).

The inversion is NPI's (guidance-1 DDIM under the source prompt; the source prompt replaces
the unconditional embedding while editing). The edit's guidance term is regularised by a
proximal operator: with d = eps(c_target) - eps(c_source) and a threshold
lambda (a quantile of |d|, per branch and frame, or fixed),

    eps = eps(c_source) + w * prox(d),   prox_l0(d) = d * [|d| > lambda]          (hard)
                                         prox_l1(d) = sign(d) * max(|d| - lambda, 0) (soft)

so that small, diffuse differences (which change the whole image) are dropped and only the
strong, localised ones edit. Where prox(d) is zero (dilated), the paper's optional
corrections pull the edit towards the source below timestep ``recon_t``:
*reconstruction guidance* moves the predicted x0 towards the source latent z0 and
*inversion guidance* moves the latent towards the inversion trajectory, each by ``recon_lr``.

Differences from the reference code (github.com/phymhan/prompt-to-prompt): the threshold is
a quantile per (branch, frame) rather than over the whole batch (so the source branch's zero
difference and the frame batching do not move it); the soft threshold is the textbook
shrinkage (the reference shrinks a second time); reconstruction guidance is applied to the
latent after the step as sqrt(alpha_prev) * recon_lr * mask * (x0 - z0), which is exactly
the DDIM step with the corrected x0.
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

PROX = ("hard", "soft")


@dataclass(frozen=True)
class ProxEditConfig:
    prox: str = "hard"              # "hard" (l0, keep |d| > lambda) or "soft" (l1, shrink by lambda)
    quantile: float = 0.7           # lambda = this quantile of |d| per branch and frame ...
    threshold: float = 0.0          # ... or, when > 0, this fixed lambda
    reconstruction_guidance: bool = False  # pull x0 towards the source z0 where prox(d) = 0
    inversion_guidance: bool = False       # pull latents towards the inversion trajectory there
    recon_lr: float = 0.1           # strength of both pulls
    recon_t: int = 400              # ... applied at timesteps below this
    dilate: int = 1                 # radius (latent pixels) the edit mask grows by

    def __post_init__(self):
        if self.prox not in PROX:
            raise VideditError(f"proxedit prox must be one of {PROX}, got {self.prox!r}")
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


def proximal(delta: torch.Tensor, config: ProxEditConfig) -> torch.Tensor:
    """prox(d) for d (nb, fb, C, h, w), the threshold taken per (branch, frame)."""
    mag = delta.abs()
    if config.threshold > 0:
        lam = mag.new_tensor(config.threshold)
    else:
        lam = mag.flatten(2).quantile(config.quantile, dim=-1)[..., None, None, None]  # (nb, fb, 1, 1, 1)
    if config.prox == "hard":
        return torch.where(mag > lam, delta, torch.zeros_like(delta))
    return delta.sign() * (mag - lam).clamp(min=0)


class ProximalGuidance(StepCallback):
    """Replaces CFG's difference by its proximal version; optionally corrects the step
    where the difference was dropped (reconstruction and inversion guidance)."""

    def __init__(self, config: ProxEditConfig, inv: Inversion, prediction_type: str):
        self.config = config
        self.inv = inv
        self.prediction_type = prediction_type
        self.keep = None         # (nb, F, C, h, w): 1 where prox(d) = 0 (dilated), this step
        self.keep_step = -1
        self.x0 = None

    def _correcting(self, ctx: StepContext) -> bool:
        c = self.config
        return (c.reconstruction_guidance or c.inversion_guidance) and c.recon_lr > 0 and ctx.timestep < c.recon_t

    def on_guidance(self, ctx, frames, uncond, cond):
        delta = proximal(cond - uncond, self.config)  # (nb, fb, C, h, w)
        if self._correcting(ctx):
            edit = (delta != 0).float()
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
    return Replay(uncond=ctx.source_cond, callbacks=(ProximalGuidance(config, inv, ctx.prediction_type),))


@register_inversion("proxedit", ProxEditConfig, replay=proximal_replay)
def proxedit_inversion(inp: InversionInputs, config: ProxEditConfig) -> Inversion:
    """ProxEdit (Han et al. 2024): negative-prompt inversion, edited with proximal (thresholded) guidance."""
    return dataclasses.replace(ddim_inversion(inp, DDIMInversionConfig(guidance=1.0)), method="proxedit")
