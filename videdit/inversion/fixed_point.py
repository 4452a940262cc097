"""Fixed-point DDIM inversion, by default ReNoise's (Garibi et al. 2024, "ReNoise: Real Image
Inversion Through Iterative Noising", ECCV). Defaults follow the official code,
github.com/garibida/ReNoise-Inversion: ``src/renoise_inversion.py`` (``inversion_step``,
``noise_regularization``), ``src/config.py`` (``RunConfig``) and its Stable Diffusion example
``examples/inversion_example_sd.py``: DDIM, 50 steps, ``num_renoise_steps`` 1, no noise
correction, ``guidance_scale`` 0 (classifier-free guidance off: conditional noise estimates
only, videdit's guidance 1), and the reconstruction sampled at guidance 1.

Plain DDIM inversion evaluates the noise at the latent it comes from, eps(z_{t-1}, t), where
the exact inverse of the DDIM step needs the one at the latent it goes to. Each inversion
step instead iterates on the implicit equation

    z_t = g(z_t),   g(z) = sqrt(a_t / a_{t-1}) (z_{t-1} - sqrt(1 - a_{t-1}) eps(z, t)) + sqrt(1 - a_t) eps(z, t)

from z = z_{t-1} (the first iterate is plain DDIM inversion): ``iterations`` evaluations of g
(ReNoise's ``num_renoise_steps`` + 1), at most ``first_step_iterations`` on the first steps,
those at timesteps below ``first_step_max_timestep``. Counting the iterations from 0, ReNoise

- averages the noise estimates eps(z_i) of the iterations i in ``average_first_step_range``
  on the first steps and in ``average_step_range`` on the others, and ends the step at g of
  the average (g is affine in eps: the mean of those iterates); a step whose range holds none
  of its iterations ends at its last iterate;
- regularises each noise estimate it steps with from iteration ``range[0]`` on, and the
  average, before stepping (``noise_regularization``, after pix2pix-zero): ``reg_steps``
  rounds of a gradient step of ``lambda_kl`` on the KL divergence between the statistics of
  4x4 patches of eps and of the estimate at the clean latent z0 (ReNoise's
  ``noise_pred_optimal``: its SD pipes make ``add_noise`` the identity, so the "forward-noised"
  latent is z0), the gradient clipped to [-100, 100], then ``ac_rolls`` steps of
  ``lambda_ac / ac_rolls`` on the auto-correlation loss (one random shift in [0, S/2) per
  frame, channel and pyramid level).

With the SD recipe (2 iterations, ranges (0, 5) and (8, 10)) the steps below t = 250 end at g
of the regularised mean of eps(z_{t-1}) and eps(g(z_{t-1})), the others at their second
iterate g(g(z_{t-1})), unregularised. ReNoise's edit-time noise correction is off in that
recipe and not included. ``average=False`` with ``reg_steps=0`` is plain fixed-point
iteration (the baseline of Pan et al. 2023, whose Anderson acceleration is ``aidi``).

A converged solution is retraced exactly by the DDIM sampler at the guidance it inverted at,
whatever the model's prediction type (eps is derived from it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from videdit.core.ddim import ddim_step, predict_x0_eps
from videdit.core.loop import CallInfo, predict_noise
from videdit.errors import VideditError
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, register_inversion
from videdit.registry import improved

GUIDANCE_WHY = ("None inverts at the edit's guidance, the sampler the edit runs, so the source replays there: "
                "reconstruction at 7.5 (docs/methods.md, toy model, 50 steps, 5 plain iterations) 6.4e-2, DDIM 6.3e-1")
PICK_WHY = ("'best' ends a step whose iteration does not converge (long steps, high guidance) at its iterate of "
            "smallest residual, not its last (docs/methods.md, fixed-point section); the same toy edit scores "
            "at ReNoise's defaults (tools/tables.py methods)")


@dataclass(frozen=True)
class FixedPointConfig:
    iterations: int = 2              # evaluations of g per step: ReNoise's num_renoise_steps + 1 (1 = DDIM inversion)
    first_step_iterations: int = 6   # at most this many on the first steps (max_num_renoise_steps_first_step + 1) ...
    first_step_max_timestep: int = 250   # ... those at timesteps below this
    average: bool = True             # average the noise estimates of the iterations in the ranges (from 0)
    average_first_step_range: tuple[int, int] = (0, 5)
    average_step_range: tuple[int, int] = (8, 10)
    reg_steps: int = 4               # noise regularisation rounds (0 = none)
    lambda_kl: float = 0.065         # patch KL weight (0 = off)
    lambda_ac: float = 20.0          # auto-correlation weight (0 = off)
    ac_rolls: int = 5                # auto-correlation steps per round
    tol: float = 0.0                 # > 0: stop a step once every frame's relative residual is below this
    pick: str = improved("last", better="best", why=PICK_WHY)   # where no average is taken: the step's last iterate
    guidance: float | None = improved(1.0, better=None, why=GUIDANCE_WHY)   # CFG while inverting (1 = conditional)

    def __post_init__(self):
        if not 1 <= self.iterations <= 100 or not 1 <= self.first_step_iterations <= 100:
            raise VideditError(f"fixed_point iterations and first_step_iterations must be in [1, 100], "
                               f"got {self.iterations}, {self.first_step_iterations}")
        if not 0 <= self.first_step_max_timestep <= 1000:
            raise VideditError(f"fixed_point first_step_max_timestep must be a timestep in [0, 1000], "
                               f"got {self.first_step_max_timestep}")
        for name in ("average_first_step_range", "average_step_range"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise VideditError(f"fixed_point {name} must be (first, end) iterations with 0 <= first <= end, "
                                   f"got {getattr(self, name)}")
        if self.reg_steps < 0 or self.lambda_kl < 0 or self.lambda_ac < 0 or self.ac_rolls < 1:
            raise VideditError(f"fixed_point reg_steps, lambda_kl and lambda_ac must be >= 0 (0 = off) and ac_rolls "
                               f">= 1, got {self.reg_steps}, {self.lambda_kl}, {self.lambda_ac}, {self.ac_rolls}")
        if self.tol < 0:
            raise VideditError(f"fixed_point tol must be >= 0 (0 = always run every iteration), got {self.tol}")
        if self.pick not in ("last", "best"):
            raise VideditError(f"fixed_point pick must be 'last' (the reference) or 'best' (the iterate of smallest "
                               f"residual), got {self.pick!r}")
        if self.guidance is not None and not 0 <= self.guidance <= 50:
            raise VideditError(f"fixed_point guidance must be in [0, 50], got {self.guidance}")

    @property
    def regularises(self) -> bool:
        return self.reg_steps > 0 and (self.lambda_kl > 0 or self.lambda_ac > 0)


def frame_residuals(gz: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """||g(z) - z|| / ||g(z)|| per frame: latents (..., F, C, h, w) -> (..., F)."""
    num = (gz - z).flatten(-3).norm(dim=-1)
    return num / gz.flatten(-3).norm(dim=-1).clamp(min=1e-12)


def relative_residual(gz: torch.Tensor, z: torch.Tensor) -> float:
    """max over frames of ||g(z) - z|| / ||g(z)||, for latents (..., F, C, h, w)."""
    return float(frame_residuals(gz, z).max())


class InverseStep:
    """g of one inversion step (schedule step ``step``): z (1, F, C, h, w) at timesteps[step]
    -> the latent whose DDIM step with eps(z) lands on ``z_prev``, the latent at
    alphas_prev[step]; ``noise`` and ``land`` are its two halves. Counts its UNet calls."""

    def __init__(self, inp: InversionInputs, step: int, z_prev: torch.Tensor, guidance: float, info: CallInfo):
        s = inp.schedule
        self.inp, self.z_prev, self.guidance, self.info = inp, z_prev, guidance, info
        self.timestep = int(s.timesteps[step])
        self.alpha, self.alpha_prev = float(s.alphas[step]), float(s.alphas_prev[step])
        self.evals = 0

    def noise(self, z: torch.Tensor) -> torch.Tensor:
        """eps(z, t), derived from the model's output."""
        inp = self.inp
        out = predict_noise(inp.unet, z, self.timestep, inp.cond, inp.uncond, (self.guidance,),
                            batch_size=inp.batch_size, info=self.info)
        self.evals += 1
        return predict_x0_eps(z, out, self.alpha, inp.prediction_type)[1]

    def land(self, eps: torch.Tensor) -> torch.Tensor:
        """The latent at timesteps[step] that the DDIM step with ``eps`` takes to ``z_prev``."""
        return ddim_step(self.z_prev, eps, self.alpha_prev, self.alpha, "epsilon")

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.land(self.noise(z))


inverse_step_map = InverseStep   # g for one schedule step: (inp, step, z_prev, guidance, info) -> the map


def fixed_point_solve(g: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, *, iterations: int,
                      tol: float = 0.0, average: tuple[int, int] | None = None,
                      regularise: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      best: bool = False) -> tuple[torch.Tensor, list[float]]:
    """Iterate z <- g(z) from z (latents (..., F, C, h, w)), at most ``iterations`` evaluations
    of g, stopping once every frame's residual is below ``tol`` (> 0). Returns the last iterate
    (``best``: per frame, the iterate of smallest residual) or, when ``average`` = (first, end)
    holds some of the iterations, g of the mean noise estimate over them; and each evaluated
    point's residual. ``regularise`` (ReNoise's noise regularisation) changes the noise estimate
    of the iterations from ``average[0]`` on (from 1 without ``average``) and the mean.
    ``average`` and ``regularise`` need an :class:`InverseStep`; plain iteration takes any map."""
    noise, land = (g.noise, g.land) if average is not None or regularise is not None else (g, lambda eps: eps)
    first = average[0] if average is not None else 1
    values, per_frame, total, count = [], [], None, 0
    for i in range(iterations):
        eps = noise(z)
        if average is not None and average[0] <= i < average[1]:
            total, count = (eps if total is None else total + eps), count + 1
        if regularise is not None and i >= first:
            eps = regularise(eps)
        gz = land(eps)
        values.append(gz)
        per_frame.append(frame_residuals(gz, z))                    # (..., F)
        z = gz
        if tol > 0 and float(per_frame[-1].max()) < tol:
            break
    if count:
        mean = total / count
        z = land(regularise(mean) if regularise is not None else mean)
    elif best:
        pick = torch.stack(per_frame).argmin(0)                      # (..., F): iterate index per frame
        z = torch.take_along_dim(torch.stack(values), pick[None, ..., None, None, None], dim=0)[0]
    return z, [float(r.max()) for r in per_frame]


def patch_kl(eps: torch.Tensor, ref: torch.Tensor, patch: int = 4) -> torch.Tensor:
    """ReNoise's ``patchify_latents_kl_divergence``: over every frame, channel and ``patch`` x
    ``patch`` cell of noise (F, C, h, w), |KL| between Gaussians with the cell's mean and
    (unbiased) variance, eps's against ref's, summed."""

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cells = x.unfold(2, patch, patch).unfold(3, patch, patch).flatten(-2)   # (F, C, h/p, w/p, p*p)
        return cells.mean(-1), cells.var(-1)

    (mu0, var0), (mu1, var1) = stats(eps), stats(ref)
    kl = torch.log((var1 + 1e-6) / (var0 + 1e-6)) + (var0 + (mu0 - mu1) ** 2) / (var1 + 1e-6) - 1
    return kl.abs().sum()


def renoise_auto_corr(eps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """ReNoise's ``auto_corr_loss`` for noise (F, C, h, w), frames one after the other: per
    channel and pyramid level (average-pooled by 2 down to 8x8), the squared mean of the noise
    times itself rolled by one random shift in [0, S/2) along each axis."""
    loss = eps.new_zeros(())
    for frame in eps:
        for channel in frame:
            noise = channel[None, None]                               # (1, 1, h, w)
            while True:
                shift = int(torch.randint(0, max(1, noise.shape[2] // 2), (1,), generator=generator))
                loss = loss + (noise * noise.roll(shift, dims=2)).mean() ** 2
                loss = loss + (noise * noise.roll(shift, dims=3)).mean() ** 2
                if noise.shape[2] <= 8:
                    break
                noise = F.avg_pool2d(noise, kernel_size=2)
    return loss


def renoise_regularise(eps: torch.Tensor, ref: torch.Tensor, config: FixedPointConfig,
                       generator: torch.Generator) -> torch.Tensor:
    """ReNoise's ``noise_regularization`` of a noise estimate (1, F, C, h, w) against the
    estimate ``ref`` at the clean latent."""

    def grad(loss_fn, at: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            var = at.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(loss_fn(var), var)
        return g

    eps, ref = eps[0], ref[0]
    for _ in range(config.reg_steps):
        if config.lambda_kl > 0:
            eps = eps - config.lambda_kl * grad(lambda e: patch_kl(e, ref), eps).clamp(-100, 100)
        if config.lambda_ac > 0:
            for _ in range(config.ac_rolls):
                eps = eps - config.lambda_ac / config.ac_rolls * grad(lambda e: renoise_auto_corr(e, generator), eps)
    return eps[None]


@torch.no_grad()
def iterative_inversion(inp: InversionInputs, method: str, solve: Callable[[InverseStep, torch.Tensor], tuple],
                        guidance: float) -> Inversion:
    """Invert step by step, each step's implicit equation solved by ``solve(g, z_prev)``."""
    s = inp.schedule
    info = CallInfo(inverting=True)
    x = inp.latents.float()[None]  # (1, F, C, h, w)
    path, evals = [x[0]], 0
    for i in inp.inverse_steps():
        info.step = i
        g = inverse_step_map(inp, i, x, guidance, info)
        x, _ = solve(g, x)
        evals += g.evals
        path.append(x[0])
    return Inversion(method=method, trajectory=inp.trajectory(path), unet_evals=evals * (2 if guidance != 1 else 1),
                     start_step=inp.start_step)


# independent_frames=False: a step's iteration stops on the batch's largest residual, and the
# auto-correlation shifts are drawn for the batch
@register_inversion("fixed_point", FixedPointConfig, independent_frames=False,
                    reference="Garibi et al. 2024, ReNoise: Real Image Inversion Through Iterative Noising; "
                              "github.com/garibida/ReNoise-Inversion (src/renoise_inversion.py, "
                              "examples/inversion_example_sd.py)",
                    steps=50, guidance=1.0)
def fixed_point_inversion(inp: InversionInputs, config: FixedPointConfig) -> Inversion:
    """Fixed-point DDIM inversion, ReNoise's by default (Garibi et al. 2024): averaged, regularised iterations."""
    generator = torch.Generator().manual_seed(inp.seed)   # CPU: it only draws the auto-correlation shifts
    clean = inp.latents.float()[None]                     # (1, F, C, h, w)

    def solve(g: InverseStep, z: torch.Tensor):
        first = g.timestep < config.first_step_max_timestep
        iterations = min(config.iterations, config.first_step_iterations) if first else config.iterations
        average = (config.average_first_step_range if first else config.average_step_range) if config.average else None
        reg_from = average[0] if average is not None else 1
        regularise = None
        if config.regularises and iterations > reg_from:   # some estimate is regularised this step
            ref = g.noise(clean)                          # the estimate at the clean latent, this timestep

            def regularise(eps):
                return renoise_regularise(eps, ref, config, generator)

        return fixed_point_solve(g, z, iterations=iterations, tol=config.tol, average=average,
                                 regularise=regularise, best=config.pick == "best")

    return iterative_inversion(inp, "fixed_point", solve, config.guidance)
