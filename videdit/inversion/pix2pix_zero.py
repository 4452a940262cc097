"""pix2pix-zero's regularised DDIM inversion (Parmar et al. 2023, "Zero-shot Image-to-Image
Translation", SIGGRAPH; "inverting real images").

DDIM inversion's noise predictions drift from Gaussian white noise, and the inverted noise
then edits poorly. Before each inversion step, the predicted noise eps is moved by
``num_reg_steps`` gradient steps on

    L = lambda_ac * L_auto + lambda_kl * L_kl,
    L_auto = sum_p sum_delta  [ mean(eta^p * roll(eta^p, delta, H)) ]^2 + [ mean(eta^p * roll(eta^p, delta, W)) ]^2,
    L_kl   = var(eps) + mean(eps)^2 - 1 - log var(eps)      (KL to N(0, I), up to a factor 1/2),

where eta^0 = eps per (frame, channel), eta^{p+1} = avgpool2(eta^p) down to 8x8 (a
pyramid), and delta is a random shift, resampled ``num_auto_corr_rolls`` times per step (each
roll's gradient step scaled by 1/num_auto_corr_rolls) as in diffusers'
``StableDiffusionPix2PixZeroPipeline``. The gradients are taken with respect to the model
output, with eps derived from it for v-prediction models.

Both losses are means, so the same lambda moves each element more on smaller latents (by
64x at 8x8 than at SD's 64x64). The reference takes the same steps at every size
(``reference_size=0``, the default). videdit's option ``reference_size=64`` takes the lambdas
as calibrated at 64x64 latents (diffusers' defaults at 512x512 images) and scales each
gradient step by h*w / 64^2, so every latent size gets the per-element regularisation the
reference applies at 512x512; the two are the same on 64x64 latents.

Other deviations from diffusers: one shift per pyramid level and roll is shared by all frames and
channels (diffusers draws one per image and channel), shifts are drawn from [1, S/2] (a
shift of 0 would penalise the variance, fighting L_kl) from a generator seeded by the edit's
seed, and L_kl is taken per frame and summed (so frames do not couple).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from videdit.core.ddim import ddim_inverse_step, predict_x0_eps
from videdit.core.loop import CallInfo, predict_noise
from videdit.errors import VideditError
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, register_inversion
from videdit.registry import improved


@dataclass(frozen=True)
class Pix2PixZeroConfig:
    lambda_ac: float = 20.0        # weight of the auto-correlation loss
    lambda_kl: float = 20.0        # weight of the KL divergence to N(0, I)
    num_reg_steps: int = 5         # regularisation rounds per inversion step
    num_auto_corr_rolls: int = 5   # random shifts per round
    guidance: float = 1.0          # classifier-free guidance while inverting (1 = conditional only)
    reference_size: int = improved(0, better=64, why="the per-element regularisation of 512x512 images at any "
                                   "size: the means shrink each element's step with the latent's area "
                                   "(tools/tables.py methods, toy 16x16 latents: colour IoU 0.49 -> 0.55, "
                                   "background PSNR 24.6 -> 27.0 dB)")

    def __post_init__(self):
        if self.lambda_ac < 0 or self.lambda_kl < 0:
            raise VideditError(f"pix2pix_zero lambda_ac and lambda_kl must be >= 0 (0 = off), "
                               f"got {self.lambda_ac}, {self.lambda_kl}")
        if not 0 <= self.num_reg_steps <= 100:
            raise VideditError(f"pix2pix_zero num_reg_steps must be in [0, 100], got {self.num_reg_steps}")
        if not 1 <= self.num_auto_corr_rolls <= 100:
            raise VideditError(f"pix2pix_zero num_auto_corr_rolls must be in [1, 100], got "
                               f"{self.num_auto_corr_rolls}")
        if not 0 <= self.guidance <= 50:
            raise VideditError(f"pix2pix_zero guidance must be in [0, 50], got {self.guidance}")
        if self.reference_size < 0:
            raise VideditError(f"pix2pix_zero reference_size must be a latent side >= 0 (0 = no rescaling), "
                               f"got {self.reference_size}")


def auto_corr_loss(eps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """L_auto of noise (F, C, h, w), summed over frames and channels, one random shift per level."""
    loss = eps.new_zeros(())
    noise = eps
    while True:
        shift = int(torch.randint(1, max(1, noise.shape[2] // 2) + 1, (1,), generator=generator))
        loss = loss + (noise * noise.roll(shift, dims=2)).mean((2, 3)).square().sum()
        loss = loss + (noise * noise.roll(shift, dims=3)).mean((2, 3)).square().sum()
        if noise.shape[2] <= 8 or noise.shape[3] <= 8:
            return loss
        noise = F.avg_pool2d(noise, kernel_size=2)


def kl_divergence(eps: torch.Tensor) -> torch.Tensor:
    """L_kl of noise (F, C, h, w) to N(0, I), per frame, summed over frames."""
    flat = eps.flatten(1)  # (F, C*h*w)
    mean, var = flat.mean(-1), flat.var(-1)
    return (var + mean.square() - 1 - torch.log(var + 1e-7)).sum()


def regularise(out: torch.Tensor, x: torch.Tensor, alpha: float, prediction_type: str, config: Pix2PixZeroConfig,
               generator: torch.Generator) -> torch.Tensor:
    """The model output (F, C, h, w) at latents x after the regularisation's gradient steps."""

    def grad(loss_fn, at: torch.Tensor) -> torch.Tensor:
        """d loss(eps(at)) / d at, for a model output ``at``."""
        with torch.enable_grad():
            var = at.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(loss_fn(predict_x0_eps(x, var, alpha, prediction_type)[1]), var)
        return g

    size = out.shape[-2] * out.shape[-1]
    scale = size / config.reference_size ** 2 if config.reference_size > 0 else 1.0
    for _ in range(config.num_reg_steps):
        if config.lambda_ac > 0:
            for _ in range(config.num_auto_corr_rolls):
                out = out - scale * config.lambda_ac / config.num_auto_corr_rolls * grad(
                    lambda eps: auto_corr_loss(eps, generator), out)
        if config.lambda_kl > 0:
            out = out - scale * config.lambda_kl * grad(kl_divergence, out)
    return out


# independent_frames=False: the noise regularisation draws its shifts for the batch
@register_inversion("pix2pix_zero", Pix2PixZeroConfig, independent_frames=False,
                    reference="Parmar et al. 2023, Zero-shot Image-to-Image Translation (SIGGRAPH); "
                    "pix2pixzero/pix2pix-zero src/utils/ddim_inv.py and diffusers' "
                    "StableDiffusionPix2PixZeroPipeline.invert")
@torch.no_grad()
def pix2pix_zero_inversion(inp: InversionInputs, config: Pix2PixZeroConfig) -> Inversion:
    """pix2pix-zero inversion (Parmar et al. 2023): DDIM inversion with auto-correlation and KL regularised noise."""
    s = inp.schedule
    x = inp.latents.float()[None]  # (1, F, C, h, w)
    info = CallInfo(inverting=True)
    generator = torch.Generator().manual_seed(inp.seed)  # CPU: it only draws the shifts
    path = [x[0]]
    for i in inp.inverse_steps():
        info.step = i
        t = int(s.timesteps[i])
        out = predict_noise(inp.unet, x, t, inp.cond, inp.uncond, (config.guidance,), batch_size=inp.batch_size,
                            info=info)
        # eps is read at the latent the model saw (diffusers does the same), the level of step i
        out = regularise(out[0], x[0], float(s.alphas[i]), inp.prediction_type, config, generator)[None]
        x = ddim_inverse_step(x, out, float(s.alphas_prev[i]), float(s.alphas[i]), inp.prediction_type)
        if not torch.isfinite(x).all():
            h, w = x.shape[-2:]
            fix = ("set its option reference_size=64 (-I reference_size=64) to scale them, or edit larger"
                   if config.reference_size == 0 else "lower lambda_ac and lambda_kl, or edit larger")
            raise VideditError(f"pix2pix_zero inversion diverged at {h}x{w} latents (its regularisation's steps are "
                               f"too large there): {fix}")
        path.append(x[0])
    evals = (len(s) - inp.start_step) * (2 if config.guidance != 1 else 1)
    return Inversion(method="pix2pix_zero", trajectory=inp.trajectory(path), unet_evals=evals,
                     start_step=inp.start_step)
