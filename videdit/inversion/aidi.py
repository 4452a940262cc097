"""AIDI: accelerated iterative diffusion inversion (Pan et al. 2023, "Effective Real Image
Editing with Accelerated Iterative Diffusion Inversion", ICCV).

The same per-step fixed point z_t = g(z_t) as ``fixed_point`` (see there), solved with
Anderson acceleration (Anderson 1965; type II as in Walker & Ni 2011): with residuals
f_k = g(z_k) - z_k and the last m differences dF, dG of residuals and values,

    gamma_k = argmin_gamma || f_k - dF gamma ||^2,   z_{k+1} = g(z_k) - dG gamma_k,

per frame (frames are independent problems). The least squares are solved through the
normal equations with a small ridge. The paper's blended guidance for editing is
an editing-time technique and not part of this inversion.

The authors released no code. The defaults follow the paper's premise, an inversion without
classifier-free guidance (guidance 1, conditional only; the edit's guidance comes from its
blended guidance instead), and a third-party reimplementation,
github.com/wmchen/diffusion-inversion (``configs/aidi_a.yaml``: Anderson acceleration with
memory 3, 5 accelerated iterations, guidance 0, i.e. conditional only, 50 steps). ``tol``,
which neither gives, only ends a step that has converged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from videdit.errors import VideditError
from videdit.inversion.fixed_point import iterative_inversion, relative_residual
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, register_inversion
from videdit.registry import departs, improved

GUIDANCE_WHY = ("None inverts at the edit's guidance, the sampler the edit runs, so the source replays there: "
                "reconstruction at 7.5 (docs/methods.md, toy model, 50 steps) 9.0e-2, DDIM 6.3e-1")


@dataclass(frozen=True)
class AIDIConfig:
    iterations: int = 5     # evaluations of g per step (1 = plain DDIM inversion)
    # stop once every frame's relative residual is below this
    tol: float = departs(1e-5, official=0.0, why="the reference always runs every iteration; this ends a step "
                         "that has converged, at the same fixed point, with fewer UNet evaluations")
    memory: int = 3         # m: past differences the Anderson mixing uses
    guidance: float | None = improved(1.0, better=None, why=GUIDANCE_WHY)  # CFG while inverting (1 = conditional)

    def __post_init__(self):
        if not 1 <= self.iterations <= 100:
            raise VideditError(f"aidi iterations must be in [1, 100], got {self.iterations}")
        if self.tol < 0:
            raise VideditError(f"aidi tol must be >= 0 (0 = always run every iteration), got {self.tol}")
        if not 1 <= self.memory <= 20:
            raise VideditError(f"aidi memory must be in [1, 20] past iterates, got {self.memory}")
        if self.guidance is not None and not 0 <= self.guidance <= 50:
            raise VideditError(f"aidi guidance must be in [0, 50], got {self.guidance}")


def anderson_solve(g: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, *, iterations: int, tol: float,
                   memory: int = 3, ridge: float = 1e-10) -> tuple[torch.Tensor, list[float]]:
    """Anderson-accelerated z = g(z) for latents z (1, F, C, h, w), at most ``iterations``
    evaluations of g; returns the next iterate and each evaluated point's residual."""
    values, diffs, residuals = [], [], []  # g(z_k) and f_k, each (F, D), the last memory + 1
    for _ in range(iterations):
        gz = g(z)
        residuals.append(relative_residual(gz, z))
        if residuals[-1] < tol:
            return gz, residuals
        values.append(gz.flatten(2)[0])                  # (F, D)
        diffs.append((gz - z).flatten(2)[0])             # (F, D)
        values, diffs = values[-(memory + 1):], diffs[-(memory + 1):]
        if len(diffs) == 1:
            z = gz
            continue
        d_f = torch.stack([b - a for a, b in zip(diffs, diffs[1:])], dim=-1)   # (F, D, m)
        d_g = torch.stack([b - a for a, b in zip(values, values[1:])], dim=-1)  # (F, D, m)
        # The m x m systems are tiny: solve them in float64 on the CPU (not every device has float64).
        gram = (d_f.transpose(1, 2) @ d_f).cpu().double()                     # (F, m, m)
        rhs = (d_f.transpose(1, 2) @ diffs[-1][..., None]).cpu().double()     # (F, m, 1)
        scale = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp(min=1e-30)[:, None, None]
        gamma = torch.linalg.solve(gram + ridge * scale * torch.eye(gram.shape[-1], dtype=gram.dtype), rhs)
        gamma = gamma.to(d_g)                                                  # (F, m, 1)
        z = (values[-1] - (d_g @ gamma)[..., 0]).view_as(gz)
    return z, residuals


# independent_frames=False: the iteration stops on the batch's largest residual
@register_inversion("aidi", AIDIConfig, independent_frames=False,
                    reference="Pan et al. 2023, Effective Real Image Editing with Accelerated Iterative Diffusion "
                              "Inversion (no official code; github.com/wmchen/diffusion-inversion reimplements it)",
                    steps=50)
def aidi_inversion(inp: InversionInputs, config: AIDIConfig) -> Inversion:
    """AIDI (Pan et al. 2023): fixed-point DDIM inversion solved with Anderson acceleration."""

    def solve(g, z):
        return anderson_solve(g, z, iterations=config.iterations, tol=config.tol, memory=config.memory)

    return iterative_inversion(inp, "aidi", solve, config.guidance)
