"""EDICT: exact inversion through two coupled latents (Wallace et al. 2023, Eqs. 14-16).

Defaults follow the official code, salesforce/EDICT ``edict_functions.py``:
``EDICT_editing`` inverts and edits with 50 steps, ``init_image_strength=0.8`` (the last
int(0.8 N) steps only: the inversion stops at step N - int(0.8 N) and the edit starts there)
and guidance 3 both ways; ``coupled_stablediffusion`` mixes with ``mix_weight=0.93`` (``p``)
and alternates the step order (``leapfrog_steps=True``); its DDIM scheduler has
``steps_offset=0`` (``--steps-offset 0``; ``configs/edict.yaml`` sets it).

Sampling step i (alpha-bar ``a`` -> ``a'``), with the DDIM step written as
``x -> c x + d eps`` (c = sqrt(a'/a), d = sqrt(1-a') - sqrt(a'(1-a)/a)):

    x_inter = c x + d eps(y)            y_inter = c y + d eps(x_inter)        (Eq. 14)
    x'      = p x_inter + (1-p) y_inter                                       (Eq. 15)
    y'      = p y_inter + (1-p) x'                                            (Eq. 16)

Leapfrog (``leapfrog=True``, the official default): on every other step of the run (the
k-th step from the edit's start step, k odd) y moves first, ``y_inter = c y + d eps(x)``,
``x_inter = c x + d eps(y_inter)``; the mixing keeps its order. ``leapfrog=False`` is the
paper's order at every step (the official ``leapfrog_steps=False``).

Every line is an affine map of one latent given the other, so it runs backwards exactly
(the paper's inversion, the same lines undone in reverse order) with the same two model
evaluations per step. ``eps(z)`` is the
noise implied by the model's output at ``z`` (the model's own epsilon, or the one derived
from a v-prediction), so v-prediction models invert exactly as well.

Conventions here: the inversion starts from x = y = z0 and stores the x path as the
trajectory and the y path as ``extras["coupled"]`` (the entries before the start step, never
inverted, hold the start latents); sampling returns x (the official code's first image; y
reconstructs the source just as well); a callback's change to x is added to y too, so the
pair stays coupled.

Exactness needs the same guidance when inverting and sampling (``guidance``: None takes the
edit's, 3 by default; the replay warns otherwise). The latent algebra runs in float64 whatever the
model's dtype (the paper runs in double precision), and sampling starts from the float64
noise: the trajectory is fp32 like every record's, so ``extras["residual"]`` keeps what fp32
rounding took off it, and ``extras["coupled"]`` stays float64. Guided sampling amplifies
even a rounding of its start (docs/methods.md).

Low precision: EDICT is known to lose exactness when the algebra runs in the UNet's dtype (the two
directions round the UNet's inputs differently now and then, and the step amplifies each
difference). With the float64 algebra both directions hand an fp16/bf16 UNet the same
inputs, so the replay is exact as long as the UNet computes the same outputs for the same
inputs (CPU; on a GPU, kernels chosen per batch shape can differ between the inversion's and
an editor's batches, which a GPU run has to measure). Inverting with
``EditSettings(inversion_dtype="fp32")`` helps only if the edit's UNet runs in fp32 too: an
fp32 inversion replayed by a bf16 UNet is far off, while bf16 both ways is exact
(docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from videdit.core.ddim import predict_x0_eps
from videdit.core.loop import CallInfo, Sampler, StepContext, predict_noise
from videdit.errors import VideditError
from videdit.inversion import _float64
from videdit.inversion._guidance import warn_if_guidance_differs
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, Replay, ReplayContext, register_inversion
from videdit.progress import progress_bar


@dataclass(frozen=True)
class EDICTConfig:
    p: float = 0.93        # mixing coefficient of Eqs. 15-16 (the official mix_weight)
    guidance: float | None = None  # None: the edit's guidance (exact replay needs the same)
    leapfrog: bool = True  # alternate which latent moves first (the official leapfrog_steps); False: x first always

    def __post_init__(self):
        if not 0 < self.p <= 1:
            raise VideditError(f"edict p must be in (0, 1] (the paper uses 0.93), got {self.p}")
        if self.guidance is not None and not 0 <= self.guidance <= 50:
            raise VideditError(f"edict guidance must be in [0, 50] (use the edit's guidance), got {self.guidance}")
        if not isinstance(self.leapfrog, bool):
            raise VideditError(f"edict leapfrog must be true or false, got {self.leapfrog!r}")


def ddim_coefficients(alpha: float, alpha_next: float) -> tuple[float, float]:
    """(c, d) with ddim_step(x, eps) = c x + d eps, from alpha-bar ``alpha`` to ``alpha_next``."""
    a, an = float(alpha), float(alpha_next)
    return (an / a) ** 0.5, (1 - an) ** 0.5 - (an * (1 - a) / a) ** 0.5


def y_moves_first(step: int, start_step: int, leapfrog: bool) -> bool:
    """Whether schedule step ``step`` of a run that starts at ``start_step`` moves y before x:
    with leapfrog every other step from the first (coupled_stablediffusion: ``offset = i % 2``
    sampling, ``(orig_i + 1) % 2`` inverting, counting from the run's first step)."""
    return leapfrog and (step - start_step) % 2 == 1


def _eps(z: torch.Tensor, out: torch.Tensor, alpha: float, prediction_type: str) -> torch.Tensor:
    return predict_x0_eps(z, out, alpha, prediction_type)[1]


class EDICTSampler(Sampler):
    """State (x, y), each (nb, F, C, h, w); two model evaluations per step."""

    evals_per_step = 2

    def __init__(self, p: float, coupling: torch.Tensor, residual: torch.Tensor, leapfrog: bool = True,
                 start_step: int = 0):
        self.p, self.leapfrog, self.start_step = p, leapfrog, start_step  # the leapfrog counts from start_step
        self.coupling = coupling  # (F, C, h, w) float64: y - x at the start step
        self.residual = residual  # (F, C, h, w): float64 start minus its fp32 rounding

    def start(self, x: torch.Tensor):
        x = _float64.start(x, self.residual)
        return x, x + self.coupling.to(x)

    def step(self, ctx: StepContext, state, predict: Callable[[torch.Tensor], torch.Tensor], prediction_type: str):
        x, y = state
        p, (c, d) = self.p, ddim_coefficients(ctx.alpha, ctx.alpha_prev)

        def move(z: torch.Tensor, other: torch.Tensor) -> torch.Tensor:   # Eq. 14, one half
            return c * z + d * _eps(other, predict(other), ctx.alpha, prediction_type)

        if y_moves_first(ctx.step, self.start_step, self.leapfrog):
            y_inter = move(y, x)
            x_inter = move(x, y_inter)
        else:
            x_inter = move(x, y)
            y_inter = move(y, x_inter)
        x = p * x_inter + (1 - p) * y_inter                                                      # Eq. 15
        y = p * y_inter + (1 - p) * x                                                            # Eq. 16
        return x, y

    def latents(self, state) -> torch.Tensor:
        return state[0].float()

    def with_latents(self, state, x: torch.Tensor):
        old_x, y = state
        change = _float64.change(old_x, x)
        return old_x + change, y + change  # the callback's change moves both latents: they stay coupled


def edict_replay(inv: Inversion, ctx: ReplayContext, config: EDICTConfig) -> Replay:
    """Sample with the coupled EDICT step from (noise, coupled noise)."""
    warn_if_guidance_differs("edict", config.guidance, ctx)
    residual = inv.extras["residual"].double()                                   # (F, C, h, w)
    coupling = inv.extras["coupled"][inv.start_step].double() - (inv.noise.double() + residual)
    return Replay(sampler=EDICTSampler(config.p, coupling, residual, config.leapfrog, inv.start_step))


@register_inversion("edict", EDICTConfig, replay=edict_replay, steps=50, guidance=3.0, strength=0.8, steps_offset=0,
                    reference="Wallace, Gokul & Naik 2023, EDICT: exact diffusion inversion via coupled "
                    "transformations (CVPR); salesforce/EDICT edict_functions.py (EDICT_editing, "
                    "coupled_stablediffusion)")
@torch.no_grad()
def edict_inversion(inp: InversionInputs, config: EDICTConfig) -> Inversion:
    """EDICT, exact inversion with two coupled latents (Wallace et al. 2023, Eqs. 14-16); 2 UNet evals a step."""
    s, p, pt, start = inp.schedule, config.p, inp.prediction_type, inp.start_step
    x = inp.latents.double()[None]  # (1, F, C, h, w)
    y = x.clone()
    info = CallInfo(inverting=True)
    xs, ys = [x[0]], [y[0]]
    for i in progress_bar(reversed(range(start, len(s))), total=len(s) - start, desc="invert", disable=not inp.progress,
                  leave=False):
        info.step = i
        t, alpha = int(s.timesteps[i]), float(s.alphas[i])
        c, d = ddim_coefficients(alpha, float(s.alphas_prev[i]))

        def unmove(z_inter: torch.Tensor, other: torch.Tensor) -> torch.Tensor:   # Eq. 14, one half undone
            out = predict_noise(inp.unet, other, t, inp.cond, inp.uncond, (config.guidance,),
                                batch_size=inp.batch_size, info=info)
            return (z_inter - d * _eps(other, out, alpha, pt)) / c

        y_inter = (y - (1 - p) * x) / p          # undo Eq. 16
        x_inter = (x - (1 - p) * y_inter) / p    # undo Eq. 15
        if y_moves_first(i, start, config.leapfrog):   # x moved second: undo it first
            x = unmove(x_inter, y_inter)
            y = unmove(y_inter, x)
        else:
            y = unmove(y_inter, x_inter)
            x = unmove(x_inter, y)
        xs.append(x[0])
        ys.append(y[0])
    evals = 2 * (len(s) - start) * (2 if config.guidance != 1 else 1)
    path = _float64.from_step(torch.stack(xs[::-1]), start)                 # (N+1, F, C, h, w) float64
    path, residual = _float64.split(path, start)                           # fp32 path, (F, C, h, w)
    coupled = _float64.from_step(torch.stack(ys[::-1]), start)
    return Inversion(method="edict", trajectory=path, extras={"coupled": coupled, "residual": residual},
                     unet_evals=evals, evals_per_step=1, frame_axes={"coupled": 1}, start_step=start)
