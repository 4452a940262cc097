"""Null-text inversion (Mokady et al. 2023, "Null-text Inversion for Editing Real Images
using Guided Diffusion Models", Alg. 1). Defaults follow the official notebook,
google/prompt-to-prompt ``null_text_w_ptp.ipynb`` (``NullInversion.null_optimization`` and
``invert``: 50 steps, guidance 7.5, 10 inner steps, early-stop epsilon 1e-5).

DDIM inversion at guidance 1 gives the pivot trajectory z*_T .. z*_0, which guided sampling
does not retrace. For each sampling step i (noise -> clean), starting from zbar_T = z*_T,
the unconditional embedding null_i (initialised from null_{i-1}, the first from the
negative prompt) is fitted with Adam so that one guided DDIM step lands on the pivot:

    min_{null_i} || z*_{i+1} - z_{i+1}(zbar_i, null_i, C) ||^2,   zbar_{i+1} = z_{i+1}(zbar_i, null_i, C)

where z_{i+1}(z, null, C) is the DDIM step with eps = eps(z, null) + w (eps(z, C) - eps(z, null)).
As in the reference, step i's Adam runs at the learning rate ``lr * (1 - lr_decay * i)``
(1e-2 * (1 - i / 100)), each inner iteration takes its update and then stops the step when
the loss it computed before the update is below ``early_stop + early_stop_growth * i``
(1e-5 + 2e-5 i). Editing then samples with the fitted null_i as the unconditional embedding at
step i; the edit must use the guidance w the embeddings were fitted at (``guidance``; the
replay warns when it does not), or the reconstruction is lost.

With a strength below 1 (``InversionInputs.start_step`` = k > 0) only the steps the edit runs
are fitted: from zbar_k = z*_k down to clean, step i keeping its index (and so its learning
rate and threshold) in the whole schedule. The record holds the embeddings of steps k..N-1.

Frames are fitted as the reference fits one image: each has its own embedding, its own loss
(the MSE over its latent) and its own early stop (a frame that has stopped keeps its
embedding while the others of its UNet batch go on). Adam is elementwise, so a frame's fit
does not depend on the others'; only rounding does: Adam's first update is lr * sign(g), and
where g is about 0 the batch's rounding decides the sign.

``unet_evals`` counts, per frame: the pivot's N forwards; per fitted step one conditional
forward, a forward and a backward per Adam update (a backward counted as one evaluation,
though it costs about two forwards' compute) and the final unconditional forward of the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from videdit.core.ddim import ddim_step
from videdit.core.guidance import cfg
from videdit.core.loop import CallInfo, predict_noise
from videdit.errors import VideditError
from videdit.inversion._guidance import warn_if_guidance_differs
from videdit.inversion.ddim import DDIMInversionConfig, ddim_inversion
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, Replay, ReplayContext, register_inversion
from videdit.progress import progress_bar
from videdit.registry import improved

LR_DECAY_WHY = ("0 keeps the first rate at every step and fits closer: reconstruction at 7.5 (toy model, 2 scenes, "
                "20 steps, tests/toy/test_toy_model.py) 5.5e-2 against 6.5e-2, DDIM 5.9e-1")


@dataclass(frozen=True)
class NullTextConfig:
    guidance: float | None = None  # None: the edit's guidance (exact replay needs the same)
    inner_steps: int = 10     # Adam updates per sampling step at most (0 = plain DDIM with the negative prompt)
    lr: float = 1e-2          # Adam learning rate at the first step ...
    lr_decay: float = improved(1e-2, better=0.0, why=LR_DECAY_WHY)  # ... and at step i: lr * (1 - lr_decay * i)
    early_stop: float = 1e-5  # step i stops once a frame's MSE to the pivot is below early_stop + early_stop_growth * i
    early_stop_growth: float = 2e-5

    def __post_init__(self):
        if self.guidance is not None and not 1 <= self.guidance <= 50:
            raise VideditError(f"null_text guidance must be in [1, 50] (at 1 the unconditional embedding is "
                               f"unused and nothing is fitted); use the edit's guidance, got {self.guidance}")
        if not 0 <= self.inner_steps <= 1000:
            raise VideditError(f"null_text inner_steps must be in [0, 1000], got {self.inner_steps}")
        if not 0 < self.lr <= 1:
            raise VideditError(f"null_text lr must be in (0, 1], got {self.lr}")
        if not 0 <= self.lr_decay < 1:
            raise VideditError(f"null_text lr_decay must be in [0, 1) (0 = a constant rate), got {self.lr_decay}")
        if self.early_stop < 0 or self.early_stop_growth < 0:
            raise VideditError(f"null_text early_stop and early_stop_growth must be >= 0 (0 and 0 = never stop "
                               f"early), got {self.early_stop}, {self.early_stop_growth}")

    def step_lr(self, step: int) -> float:
        """Adam's learning rate at schedule step ``step``."""
        return self.lr * (1 - self.lr_decay * step)

    def step_threshold(self, step: int) -> float:
        """The early-stop threshold of schedule step ``step``."""
        return self.early_stop + self.early_stop_growth * step


def null_text_replay(inv: Inversion, ctx: ReplayContext, config: NullTextConfig) -> Replay:
    """Replay: the fitted embedding of step i, (1, F, L, D), as the unconditional one."""
    if ctx.guidance != 1:  # at 1 the embeddings are unused: the replay is guidance-1 DDIM's
        warn_if_guidance_differs("null_text", config.guidance, ctx)
    null = inv.extras["null_embeds"].to(ctx.source_cond.device)  # (N - k, F, L, D): steps k..N-1
    first = inv.n_steps - null.shape[0]

    def at(step: int) -> torch.Tensor:
        if step < first:
            raise VideditError(f"null_text fitted steps {first}..{inv.n_steps - 1} and the edit starts at step "
                               f"{step}; invert with the edit's strength")
        return null[step - first][None]

    return Replay(uncond=at)


# independent_frames=False: Adam's first update is lr * sign(g), whose sign the batch's rounding decides where g ~ 0
@register_inversion("null_text", NullTextConfig, replay=null_text_replay, independent_frames=False,
                    reference="Mokady et al. 2023, Null-text Inversion for Editing Real Images; "
                              "github.com/google/prompt-to-prompt (null_text_w_ptp.ipynb)",
                    steps=50, guidance=7.5)
def null_text_inversion(inp: InversionInputs, config: NullTextConfig) -> Inversion:
    """Null-text inversion (Mokady et al. 2023): DDIM pivot, per-step null embeddings fitted to it."""
    n_steps, start = len(inp.schedule), inp.start_step
    if config.inner_steps and config.step_lr(n_steps - 1) <= 0:
        raise VideditError(f"null_text's learning rate lr * (1 - lr_decay * i) reaches 0 by step {n_steps - 1}; "
                           f"lower lr_decay below {1 / (n_steps - 1):.3g} for {n_steps} steps")
    pivot = ddim_inversion(inp, DDIMInversionConfig(guidance=1.0))
    traj = pivot.trajectory                                  # (N+1, F, C, h, w)
    n_frames = traj.shape[1]
    null = inp.uncond.float().expand(n_frames, *inp.uncond.shape[1:])  # (F, L, D)
    embeds, evals = [], 0
    bar = progress_bar(total=(n_steps - start) * math.ceil(n_frames / inp.batch_size), desc="null-text",
               disable=not inp.progress, leave=False)
    for first in range(0, n_frames, inp.batch_size):         # frames are independent: fit each batch alone
        frames = slice(first, first + inp.batch_size)
        e, n = _fit_batch(inp, config, traj[:, frames], null[frames], bar)  # (N - k, fb, L, D)
        embeds.append(e)
        evals += n * e.shape[1]
    bar.close()
    return Inversion(method="null_text", trajectory=traj, extras={"null_embeds": torch.cat(embeds, dim=1)},
                     unet_evals=pivot.unet_evals + math.ceil(evals / n_frames), start_step=start,
                     frame_axes={"null_embeds": 1})


def _fit_batch(inp: InversionInputs, config: NullTextConfig, pivot: torch.Tensor, null: torch.Tensor,
               bar) -> tuple[torch.Tensor, int]:
    """Alg. 1 over one frame batch from step ``inp.start_step``: pivot (N+1, fb, C, h, w), null
    (fb, L, D) fp32 -> fitted embeddings (N - k, fb, L, D) in the text dtype, and UNet
    evaluations spent."""
    s, w, g = inp.schedule, (config.guidance,), config.guidance
    info = CallInfo(inverting=True)
    z = pivot[inp.start_step][None]                          # (1, fb, C, h, w): zbar_k = z*_k
    inner = config.inner_steps if g != 1 else 0              # at guidance 1 the embedding has no effect
    out, evals = [], 0
    for i in range(inp.start_step, len(s)):
        t, a, a_prev = int(s.timesteps[i]), float(s.alphas[i]), float(s.alphas_prev[i])
        info.step = i
        with torch.no_grad():
            c = predict_noise(inp.unet, z, t, inp.cond, None, w, batch_size=inp.batch_size, info=info)
        evals += 1
        null = null.detach().clone().requires_grad_(True)    # fp32; cast to the UNet's dtype inside
        opt = torch.optim.Adam([null], lr=config.step_lr(i))
        stopped = torch.zeros(null.shape[0], dtype=torch.bool, device=null.device)  # (fb,)
        for _ in range(inner):
            u = predict_noise(inp.unet, z, t, null[None], None, w, batch_size=inp.batch_size, info=info)
            z_next = ddim_step(z, cfg(u, c, g), a, a_prev, inp.prediction_type)  # (1, fb, C, h, w)
            loss = (z_next - pivot[i + 1][None]).square().flatten(2).mean(-1)[0]  # (fb,) per-frame MSE
            (null.grad,) = torch.autograd.grad(loss.sum(), null)  # the embedding only; UNet params stay frozen
            kept = null.detach()[stopped].clone()
            opt.step()                                       # the update comes before the stopping test
            with torch.no_grad():
                null[stopped] = kept                         # a frame that has stopped keeps its embedding
            evals += 2
            stopped |= loss.detach() < config.step_threshold(i)
            if bool(stopped.all()):
                break
        with torch.no_grad():                                # the step with the fitted embedding: zbar_{i+1}
            u = predict_noise(inp.unet, z, t, null[None], None, w, batch_size=inp.batch_size, info=info)
            z = ddim_step(z, cfg(u, c, g), a, a_prev, inp.prediction_type)
        evals += 1
        out.append(null.detach().to(inp.cond.dtype))
        bar.update()
    return torch.stack(out), evals
