"""Fixed-point DDIM inversion (Pan et al. 2023, "Effective Real Image Editing with
Accelerated Iterative Diffusion Inversion", ICCV; the averaging of ReNoise, Garibi et al.
2024, "ReNoise: Real Image Inversion Through Iterative Noising", ECCV, as an option).

Plain DDIM inversion evaluates the noise at the latent it comes from, eps(z_{t-1}, t), where
the exact inverse of the DDIM step needs the one at the latent it goes to. Each inversion
step instead solves the implicit equation

    z_t = g(z_t),   g(z) = sqrt(a_t / a_{t-1}) (z_{t-1} - sqrt(1 - a_{t-1}) eps(z, t)) + sqrt(1 - a_t) eps(z, t)

by iterating z <- g(z) from z = z_{t-1} (the first iterate is plain DDIM inversion), until
the relative residual ||g(z) - z|| / ||g(z)|| of every frame is below ``tol``. With
``average_last`` = k > 1 the step ends at the mean of the last k iterates g(z), which (g
being affine in eps) is ReNoise's averaged noise estimate; ReNoise's noise regularisation
and its edit-time noise correction are not included. A converged solution is retraced
exactly by the DDIM sampler, whatever the model's prediction type (eps is derived from it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from videdit.core.ddim import ddim_step, predict_x0_eps
from videdit.core.loop import CallInfo, predict_noise
from videdit.errors import VideditError
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, register_inversion

# A solver of z = g(z) from z0: (g, z0) -> (z, relative residual of each iterate).
Solver = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor], tuple[torch.Tensor, list[float]]]


@dataclass(frozen=True)
class FixedPointConfig:
    iterations: int = 5     # evaluations of g per step (1 = plain DDIM inversion)
    tol: float = 1e-5       # stop once every frame's relative residual is below this
    average_last: int = 0   # > 1: end at the mean of the last k iterates (ReNoise)
    guidance: float | None = None  # CFG while inverting; None: the edit's guidance (the sampler it inverts)

    def __post_init__(self):
        if not 1 <= self.iterations <= 100:
            raise VideditError(f"fixed_point iterations must be in [1, 100], got {self.iterations}")
        if self.tol < 0:
            raise VideditError(f"fixed_point tol must be >= 0 (0 = always run every iteration), got {self.tol}")
        if not 0 <= self.average_last <= self.iterations:
            raise VideditError(f"fixed_point average_last must be in [0, iterations={self.iterations}], "
                               f"got {self.average_last}")
        if self.guidance is not None and not 0 <= self.guidance <= 50:
            raise VideditError(f"fixed_point guidance must be in [0, 50], got {self.guidance}")


def frame_residuals(gz: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """||g(z) - z|| / ||g(z)|| per frame: latents (..., F, C, h, w) -> (..., F)."""
    num = (gz - z).flatten(-3).norm(dim=-1)
    return num / gz.flatten(-3).norm(dim=-1).clamp(min=1e-12)


def relative_residual(gz: torch.Tensor, z: torch.Tensor) -> float:
    """max over frames of ||g(z) - z|| / ||g(z)||, for latents (..., F, C, h, w)."""
    return float(frame_residuals(gz, z).max())


def fixed_point_solve(g: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, *, iterations: int, tol: float,
                      average_last: int = 0) -> tuple[torch.Tensor, list[float]]:
    """Picard iteration z <- g(z), at most ``iterations`` evaluations of g; returns, per frame,
    g of the iterate with the smallest residual (the last one while the iteration converges),
    or the mean of the last ``average_last`` values of g, and each evaluated point's residual.

    Keeping the best iterate matters because g need not be a contraction when steps are long
    and guidance high: a step whose iteration does not converge then ends at its least bad
    iterate, not its last (docs/methods.md). :mod:`~videdit.inversion.aidi` solves the same
    equation with Anderson acceleration."""
    values, per_frame = [], []
    for _ in range(iterations):
        gz = g(z)
        values.append(gz)
        per_frame.append(frame_residuals(gz, z))                   # (..., F)
        z = gz
        if float(per_frame[-1].max()) < tol:
            break
    if average_last > 1:
        z = torch.stack(values[-average_last:]).mean(0)
    else:
        best = torch.stack(per_frame).argmin(0)                      # (..., F): iterate index per frame
        z = torch.take_along_dim(torch.stack(values), best[None, ..., None, None, None], dim=0)[0]
    return z, [float(r.max()) for r in per_frame]


def inverse_step_map(inp: InversionInputs, step: int, z_prev: torch.Tensor, guidance: float,
                     info: CallInfo) -> Callable[[torch.Tensor], torch.Tensor]:
    """g for schedule step ``step``: z (1, F, C, h, w) at timesteps[step] -> the latent whose
    DDIM step with eps(z) lands on z_prev, the latent at alphas_prev[step]."""
    s = inp.schedule
    t, a, a_prev = int(s.timesteps[step]), float(s.alphas[step]), float(s.alphas_prev[step])

    def g(z: torch.Tensor) -> torch.Tensor:
        out = predict_noise(inp.unet, z, t, inp.cond, inp.uncond, (guidance,), batch_size=inp.batch_size, info=info)
        eps = predict_x0_eps(z, out, a, inp.prediction_type)[1]
        return ddim_step(z_prev, eps, a_prev, a, "epsilon")

    return g


@torch.no_grad()
def iterative_inversion(inp: InversionInputs, method: str, solve: Solver, guidance: float) -> Inversion:
    """Invert step by step, each step's implicit equation solved by ``solve``."""
    s = inp.schedule
    info = CallInfo(inverting=True)
    x = inp.latents.float()[None]  # (1, F, C, h, w)
    path, evals = [x[0]], 0
    for i in tqdm(reversed(range(len(s))), total=len(s), desc="invert", disable=not inp.progress, leave=False):
        info.step = i
        x, residuals = solve(inverse_step_map(inp, i, x, guidance, info), x)
        evals += len(residuals)
        path.append(x[0])
    return Inversion(method=method, trajectory=torch.stack(path[::-1]),
                     unet_evals=evals * (2 if guidance != 1 else 1))


# independent_frames=False: the iteration stops on the batch's largest residual
@register_inversion("fixed_point", FixedPointConfig, independent_frames=False)
def fixed_point_inversion(inp: InversionInputs, config: FixedPointConfig) -> Inversion:
    """Fixed-point DDIM inversion (Pan et al. 2023; ReNoise averaging as an option): each step solved implicitly."""

    def solve(g, z):
        return fixed_point_solve(g, z, iterations=config.iterations, tol=config.tol,
                                 average_last=config.average_last)

    return iterative_inversion(inp, "fixed_point", solve, config.guidance)
