"""BDIA-DDIM: exact inversion by bidirectional integration approximation (Zhang, Lewis &
Kleijn 2024, "Exact diffusion inversion via bidirectional integration approximation", ECCV).

With latents z_k at schedule step k (z_0 the noisiest) and one model output at z_k, let
``A_k`` be the DDIM move of z_k back up to step k-1's noise level and ``B_k`` its DDIM move
down to step k+1's (the backward and forward integration approximations). BDIA-DDIM
replaces the DDIM step z_{k+1} = B_k by (the paper's BDIA update applied to DDIM)

    z_{k+1} = B_k + gamma (z_{k-1} - A_k)           gamma in (0, 1]; gamma = 0 is DDIM

which is solved for z_{k-1} exactly, with the same single model evaluation per step:
``z_{k-1} = A_k + (z_{k+1} - B_k) / gamma``. The sampler keeps the previous latent.

The first sampling step has no previous latent. The inversion gets its start pair
(z_N = z0, z_{N-1}) by one DDIM inversion step and runs BDIA's inverse up to the edit's start
step s, which fixes z_s and z_{s+1} jointly. As in the official code (``first_step="inverted"``),
sampling takes the inverted pair: its first step lands on the inversion's z_{s+1} without a
model evaluation (the stored float64 move ``extras["first_offset"] = z_{s+1} - z_s`` is added to
every branch, so a branch that starts elsewhere keeps its difference), and the edit acts from
step s+1 on. ``first_step="edited"`` (videdit's option) runs that step too: plain DDIM under
the edit's prompt plus what DDIM from z_s misses of z_{s+1} (then ``first_offset = z_{s+1} -
DDIM(z_s)``, one more UNet evaluation to invert), so the edit acts on every step. Either way
the reconstruction is exact. A callback's change to the latents is applied to the kept
previous latent too, so the ``z_{k-1} - A_k`` term does not pull the change back out.

Defaults follow the official code, guoqiang-zhang-x/BDIA ``image-editing/bdia_edict_functions.py``:
``BDIA_editing`` inverts and edits with 50 steps, ``init_image_strength=0.8`` (the last
int(0.8 N) steps only) and guidance 3 both ways; ``gamma=0.94`` is what the authors'
``BDIA_experiments.ipynb`` passes; the DDIM scheduler has ``steps_offset=0`` (``--steps-offset
0``; ``configs/bdia.yaml`` sets it). ``BDIA_stablediffusion`` evaluates the model of the
inversion's first step, z0 -> z_{N-1}, at the timestep below the schedule's last; with
``steps_offset=0`` that step's alpha-bars are equal and the model output drops out, so here it
is evaluated at the last timestep.

Exact when the edit samples at the inversion's guidance (``guidance``: None takes the edit's,
3 by default; the replay warns otherwise). As in :mod:`videdit.inversion.edict`, the latent
algebra runs in float64 and sampling starts from the float64 noise (the fp32 trajectory plus
``extras["residual"]``): the inverse step divides by gamma, and guided sampling amplifies a
rounding of its start (docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from videdit.core.ddim import ddim_inverse_step, ddim_step
from videdit.core.loop import CallInfo, Sampler, StepContext, predict_noise
from videdit.errors import VideditError
from videdit.inversion import _float64
from videdit.inversion._guidance import warn_if_guidance_differs
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, Replay, ReplayContext, register_inversion
from videdit.progress import progress_bar
from videdit.registry import improved


# the first sampling step: the inversion's move (the official code) or a DDIM step under the edit plus its gap
FIRST_STEPS = ("inverted", "edited")


@dataclass(frozen=True)
class BDIAConfig:
    gamma: float = 0.94    # weight of the backward integration (the authors' notebook; they recommend 0.92-1.0)
    guidance: float | None = None  # None: the edit's guidance (exact replay needs the same)
    first_step: str = improved("inverted", better="edited", why="the first step samples under the edit's prompt "
                               "too, so the edit acts on every step of the schedule (one more UNet evaluation "
                               "to invert); on the toy world's edits it scores as the official first step "
                               "(tools/tables.py methods: colour IoU 0.41 against 0.43)")

    def __post_init__(self):
        if not 0 < self.gamma <= 1:
            raise VideditError(f"bdia gamma must be in (0, 1] (0 would be DDIM, which is not invertible; "
                               f"try 0.94), got {self.gamma}")
        if self.guidance is not None and not 0 <= self.guidance <= 50:
            raise VideditError(f"bdia guidance must be in [0, 50] (use the edit's guidance), got {self.guidance}")
        if self.first_step not in FIRST_STEPS:
            raise VideditError(f"bdia first_step must be one of {list(FIRST_STEPS)}, got {self.first_step!r}")


def bdia_step(x_prev: torch.Tensor, x: torch.Tensor, model_output: torch.Tensor, alpha_prev_level: float,
              alpha: float, alpha_next: float, gamma: float, prediction_type: str = "epsilon") -> torch.Tensor:
    """z_{k+1} = B_k + gamma (z_{k-1} - A_k): from ``x`` at alpha-bar ``alpha`` (``x_prev`` at
    ``alpha_prev_level``, the step before) to ``alpha_next``."""
    forward = ddim_step(x, model_output, alpha, alpha_next, prediction_type)         # B_k
    backward = ddim_step(x, model_output, alpha, alpha_prev_level, prediction_type)  # A_k
    return forward + gamma * (x_prev - backward)


def bdia_inverse_step(x_next: torch.Tensor, x: torch.Tensor, model_output: torch.Tensor, alpha_prev_level: float,
                      alpha: float, alpha_next: float, gamma: float, prediction_type: str = "epsilon") -> torch.Tensor:
    """z_{k-1} = A_k + (z_{k+1} - B_k) / gamma: :func:`bdia_step` solved for the previous latent."""
    forward = ddim_step(x, model_output, alpha, alpha_next, prediction_type)
    backward = ddim_step(x, model_output, alpha, alpha_prev_level, prediction_type)
    return backward + (x_next - forward) / gamma


class BDIASampler(Sampler):
    """State (previous latents or None, their alpha-bar, latents), latents (nb, F, C, h, w)."""

    def __init__(self, gamma: float, first_offset: torch.Tensor, residual: torch.Tensor, first_step: str = "inverted"):
        self.gamma, self.first_step = gamma, first_step
        self.first_offset = first_offset  # (F, C, h, w) float64
        self.residual = residual          # (F, C, h, w): float64 start minus its fp32 rounding

    def start(self, x: torch.Tensor):
        return None, None, _float64.start(x, self.residual)

    def step(self, ctx: StepContext, state, predict: Callable[[torch.Tensor], torch.Tensor], prediction_type: str):
        x_prev, alpha_prev_level, x = state
        if x_prev is None and self.first_step == "inverted":   # the inversion's own move: no model evaluation
            return x, ctx.alpha, x + self.first_offset.to(x)
        out = predict(x)
        if x_prev is None:  # first step, edited: plain DDIM, plus the inversion's first-step offset
            x_next = ddim_step(x, out, ctx.alpha, ctx.alpha_prev, prediction_type) + self.first_offset.to(x)
        else:
            x_next = bdia_step(x_prev, x, out, alpha_prev_level, ctx.alpha, ctx.alpha_prev, self.gamma,
                               prediction_type)
        return x, ctx.alpha, x_next

    def latents(self, state) -> torch.Tensor:
        return state[2].float()

    def with_latents(self, state, x: torch.Tensor):
        x_prev, alpha_prev_level, old = state
        change = _float64.change(old, x)
        return (None if x_prev is None else x_prev + change), alpha_prev_level, old + change


def bdia_replay(inv: Inversion, ctx: ReplayContext, config: BDIAConfig) -> Replay:
    """Sample with BDIA-DDIM from the inverted noise."""
    warn_if_guidance_differs("bdia", config.guidance, ctx)
    residual = inv.extras["residual"]
    return Replay(sampler=BDIASampler(config.gamma, inv.extras["first_offset"].double(), residual, config.first_step))


@register_inversion("bdia", BDIAConfig, replay=bdia_replay, steps=50, guidance=3.0, strength=0.8, steps_offset=0,
                    reference="Zhang, Lewis & Kleijn 2024, Exact diffusion inversion via bidirectional integration "
                    "approximation (ECCV); guoqiang-zhang-x/BDIA image-editing/bdia_edict_functions.py "
                    "(BDIA_editing, BDIA_stablediffusion) and BDIA_experiments.ipynb (gamma)")
@torch.no_grad()
def bdia_inversion(inp: InversionInputs, config: BDIAConfig) -> Inversion:
    """BDIA-DDIM, exact inversion by bidirectional integration (Zhang et al. 2024); 1 UNet eval a step."""
    s, n, pt, start = inp.schedule, len(inp.schedule), inp.prediction_type, inp.start_step
    info = CallInfo(inverting=True)

    def predict(z: torch.Tensor, i: int) -> torch.Tensor:
        info.step = i
        return predict_noise(inp.unet, z, int(s.timesteps[i]), inp.cond, inp.uncond, (config.guidance,),
                             batch_size=inp.batch_size, info=info)

    def level(k: int) -> float:  # alpha-bar of trajectory entry k (entry n is the clean latent)
        return float(s.alphas[k]) if k < n else float(s.alphas_prev[n - 1])

    path = [None] * (n + 1)  # path[k]: (1, F, C, h, w) at schedule step k, for k >= start
    path[n] = inp.latents.double()[None]
    edited = config.first_step == "edited"
    bar = progress_bar(total=n - start + edited, desc="invert", disable=not inp.progress, leave=False)
    # Start pair: one DDIM inversion step, z0 -> z_{N-1}.
    path[n - 1] = ddim_inverse_step(path[n], predict(path[n], n - 1), level(n), level(n - 1), pt)
    bar.update()
    for k in range(n - 1, start, -1):
        path[k - 1] = bdia_inverse_step(path[k + 1], path[k], predict(path[k], k), level(k - 1), level(k),
                                        level(k + 1), config.gamma, pt)
        bar.update()
    if edited:   # the first sampling step is plain DDIM from z_s: keep what it misses of z_{s+1}
        first_offset = path[start + 1] - ddim_step(path[start], predict(path[start], start), level(start),
                                                   level(start + 1), pt)
        bar.update()
    else:        # the first sampling step is the inversion's own move
        first_offset = path[start + 1] - path[start]
    bar.close()
    evals = (n - start + edited) * (2 if config.guidance != 1 else 1)
    full = _float64.from_step(torch.cat(path[start:]), start)        # (N+1, F, C, h, w) float64
    full, residual = _float64.split(full, start)                      # fp32 path, (F, C, h, w)
    return Inversion(method="bdia", trajectory=full, unet_evals=evals, start_step=start,
                     extras={"first_offset": first_offset[0], "residual": residual})
