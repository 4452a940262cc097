"""Null-text inversion (Mokady et al. 2023, "Null-text Inversion for Editing Real Images
using Guided Diffusion Models", Alg. 1).

DDIM inversion at guidance 1 gives the pivot trajectory z*_T .. z*_0, which guided sampling
does not retrace. For each sampling step t (noise -> clean), starting from zbar_T = z*_T,
the unconditional embedding null_t (initialised from null_{t+1}, the first from the
negative prompt) is fitted with Adam so that one guided DDIM step lands on the pivot:

    min_{null_t} || z*_{t-1} - z_{t-1}(zbar_t, null_t, C) ||^2,   zbar_{t-1} = z_{t-1}(zbar_t, null_t, C)

where z_{t-1}(z, null, C) is the DDIM step with eps = eps(z, null) + w (eps(z, C) - eps(z, null)).
Editing then samples with the fitted null_t as the unconditional embedding at step t; the
edit must use the guidance w the embeddings were fitted at (``guidance``; the replay warns
when it does not), or the reconstruction is lost.

Frames are independent: each gets its own embedding, frames in one UNet batch are optimised
together (the loss is the sum of per-frame MSEs, so each frame's gradient is its own; Adam
is elementwise) and stop early together when every frame's loss is below ``early_stop``.
Deviations from the reference code: a constant learning rate and threshold (the reference
decays the learning rate by 1 - i/100 and raises the threshold by 2e-5 per step), and the
early-stop test is made before the backward pass, so a converged step costs no backward.

``unet_evals`` counts, per frame: the pivot's N forwards; per step one conditional forward,
one forward per optimisation iteration, one backward per Adam update (a backward counted as
one evaluation, though it costs about two forwards' compute).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from videdit.core.ddim import ddim_step
from videdit.core.guidance import cfg
from videdit.core.loop import CallInfo, predict_noise
from videdit.errors import VideditError
from videdit.inversion._guidance import warn_if_guidance_differs
from videdit.inversion.ddim import DDIMInversionConfig, ddim_inversion
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, Replay, ReplayContext, register_inversion


@dataclass(frozen=True)
class NullTextConfig:
    guidance: float | None = None  # None: the edit's guidance (exact replay needs the same)
    inner_steps: int = 10     # Adam updates per sampling step (0 = plain DDIM with the negative prompt)
    lr: float = 1e-2          # Adam learning rate
    early_stop: float = 1e-5  # stop a step's updates once every frame's MSE to the pivot is below this

    def __post_init__(self):
        if self.guidance is not None and not 1 <= self.guidance <= 50:
            raise VideditError(f"null_text guidance must be in [1, 50] (at 1 the unconditional embedding is "
                               f"unused and nothing is fitted); use the edit's guidance, got {self.guidance}")
        if not 0 <= self.inner_steps <= 1000:
            raise VideditError(f"null_text inner_steps must be in [0, 1000], got {self.inner_steps}")
        if not 0 < self.lr <= 1:
            raise VideditError(f"null_text lr must be in (0, 1], got {self.lr}")
        if self.early_stop < 0:
            raise VideditError(f"null_text early_stop must be >= 0 (0 = never stop early), got {self.early_stop}")


def null_text_replay(inv: Inversion, ctx: ReplayContext, config: NullTextConfig) -> Replay:
    """Replay: the fitted embedding of step i, (1, F, L, D), as the unconditional one."""
    if ctx.guidance != 1:  # at 1 the embeddings are unused: the replay is guidance-1 DDIM's
        warn_if_guidance_differs("null_text", config.guidance, ctx)
    null = inv.extras["null_embeds"].to(ctx.source_cond.device)  # (N, F, L, D)
    return Replay(uncond=[e[None] for e in null])


# independent_frames=False: the inner loop stops on the batch's largest loss
@register_inversion("null_text", NullTextConfig, replay=null_text_replay, independent_frames=False)
def null_text_inversion(inp: InversionInputs, config: NullTextConfig) -> Inversion:
    """Null-text inversion (Mokady et al. 2023): DDIM pivot, per-step null embeddings fitted to it."""
    pivot = ddim_inversion(inp, DDIMInversionConfig(guidance=1.0))
    traj = pivot.trajectory                                  # (N+1, F, C, h, w)
    n_steps, n_frames = len(inp.schedule), traj.shape[1]
    null = inp.uncond.float().expand(n_frames, *inp.uncond.shape[1:])  # (F, L, D)
    embeds, evals = [], 0
    bar = tqdm(total=n_steps * math.ceil(n_frames / inp.batch_size), desc="null-text", disable=not inp.progress,
               leave=False)
    for start in range(0, n_frames, inp.batch_size):         # frames are independent: fit each batch alone
        frames = slice(start, start + inp.batch_size)
        e, n = _fit_batch(inp, config, traj[:, frames], null[frames], bar)  # (N, fb, L, D)
        embeds.append(e)
        evals += n * e.shape[1]
    bar.close()
    return Inversion(method="null_text", trajectory=traj, extras={"null_embeds": torch.cat(embeds, dim=1)},
                     unet_evals=pivot.unet_evals + math.ceil(evals / n_frames), frame_axes={"null_embeds": 1})


def _fit_batch(inp: InversionInputs, config: NullTextConfig, pivot: torch.Tensor, null: torch.Tensor,
               bar) -> tuple[torch.Tensor, int]:
    """Alg. 1 over one frame batch: pivot (N+1, fb, C, h, w), null (fb, L, D) fp32 ->
    fitted embeddings (N, fb, L, D) in the text dtype, and UNet evaluations spent."""
    s, w, g = inp.schedule, (config.guidance,), config.guidance
    info = CallInfo(inverting=True)
    z = pivot[0][None]                                       # (1, fb, C, h, w): zbar_T = z*_T
    out, evals = [], 0
    for i in range(len(s)):
        t, a, a_prev = int(s.timesteps[i]), float(s.alphas[i]), float(s.alphas_prev[i])
        info.step = i
        with torch.no_grad():
            c = predict_noise(inp.unet, z, t, inp.cond, None, w, batch_size=inp.batch_size, info=info)
        evals += 1
        null = null.detach().clone().requires_grad_(True)    # fp32; cast to the UNet's dtype inside
        opt = torch.optim.Adam([null], lr=config.lr)
        inner = config.inner_steps if g != 1 else 0  # at guidance 1 the embedding has no effect
        for j in range(inner + 1):
            last = j == inner
            with torch.set_grad_enabled(not last):
                u = predict_noise(inp.unet, z, t, null[None], None, w, batch_size=inp.batch_size, info=info)
                z_next = ddim_step(z, cfg(u, c, g), a, a_prev, inp.prediction_type)  # (1, fb, C, h, w)
                loss = (z_next - pivot[i + 1][None]).square().flatten(2).mean(-1)  # (1, fb) per-frame MSE
            evals += 1
            if last or float(loss.detach().max()) < config.early_stop:
                break
            (null.grad,) = torch.autograd.grad(loss.sum(), null)  # the embedding only; UNet params stay frozen
            opt.step()
            evals += 1
        z = z_next.detach()
        out.append(null.detach().to(inp.cond.dtype))
        bar.update()
    return torch.stack(out), evals
