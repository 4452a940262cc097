"""Edit-friendly DDPM inversion (Huberman-Spiegelglas, Kulikov & Michaeli 2024, "An edit
friendly DDPM noise space: inversion and manipulations", CVPR; Eqs. 6-7, Alg. 1).

The noisy latents are drawn independently of one another (Eq. 6),

    x_i = sqrt(a_i) x_0 + sqrt(1 - a_i) eps_i,    eps_i ~ N(0, I) independent per step,

and the noise maps are whatever makes DDPM sampling (eta = 1) pass through them (Eq. 7):

    z_i = (x_{i+1} - mu_i(x_i)) / sigma_i,

so sampling ``x_{i+1} = mu_i(x_i) + sigma_i z_i`` from x_0's noisy version reproduces the
trajectory, and the source, exactly. Editing re-runs that sampler under the target prompt
with the same maps (every branch uses the same maps). ``skip`` is the paper's T_skip:
editing starts at step ``skip`` from x_skip, the first ``skip`` steps are never run and
cost nothing (their maps are zeros).

The maps absorb the guidance they were extracted at (``guidance``, 7.5 like the default
edit); reconstruction is exact when the edit uses the same (the replay warns otherwise).
The noise is seeded by the edit's seed. A clip's frames share it (``noise="shared"``, the
default): eps_i is one draw for every frame, the same in every batch and window, so frames
that look alike stay alike through the trajectory and the edit: on the toy clips this lowers
the warp error of independent per-frame editing below a draw per frame's (``noise="frame"``,
drawn for the batch), with as many frames edited (docs/video.md). One frame alone gets the same
noise either way. The maps are kept in float64, so that the replay lands on the trajectory to
the last bit and stays exact with an fp16/bf16 UNet too (it recomputes the same mu_i from the
same x_i). Where sigma_i = 0 (a final alpha-bar of 1) the map holds the residual itself so that
the last step stays exact. Unlike diffusers' LEDITS++
inversion (the same scheme), the mean here is our own pure ``ddpm_mean`` on videdit's
schedule, and frames go through the UNet in batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from videdit.core.ddpm import ddpm_mean, ddpm_sigma
from videdit.core.loop import CallInfo, Sampler, StepContext, predict_noise
from videdit.errors import VideditError
from videdit.inversion._exact import float64
from videdit.inversion._guidance import warn_if_guidance_differs
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, Replay, ReplayContext, register_inversion

NOISE = ("shared", "frame")


@dataclass(frozen=True)
class DDPMInversionConfig:
    skip: float = 0        # T_skip: below 1 a fraction of the steps, a whole number >= 1 a step count
    guidance: float | None = None  # None: the edit's guidance (exact replay needs the same)
    noise: str = "shared"  # shared: one draw for every frame (module doc); frame: a draw per frame of the batch

    def __post_init__(self):
        if self.skip < 0 or (self.skip >= 1 and self.skip != int(self.skip)):
            raise VideditError(f"ddpm skip must be a fraction in [0, 1) or a whole number of steps, got {self.skip}")
        if self.guidance is not None and not 0 <= self.guidance <= 50:
            raise VideditError(f"ddpm guidance must be in [0, 50] (use the edit's guidance), got {self.guidance}")
        if self.noise not in NOISE:
            raise VideditError(f"ddpm noise must be one of {list(NOISE)}, got {self.noise!r}")

    def skip_steps(self, n_steps: int) -> int:
        """The number of steps skipped out of ``n_steps``."""
        skip = round(self.skip * n_steps) if self.skip < 1 else int(self.skip)
        if skip >= n_steps:
            raise VideditError(f"ddpm skip={self.skip} leaves no step of {n_steps} to sample; "
                               f"use a smaller skip or more steps")
        return skip


def _noise_scale(alpha: float, alpha_next: float) -> float:
    sigma = ddpm_sigma(alpha, alpha_next)
    return sigma if sigma > 0 else 1.0  # deterministic last step: the map holds the residual itself


class DDPMSampler(Sampler):
    """x_{i+1} = mu_i(x_i) + sigma_i z_i with the stored maps z (N, F, C, h, w), the same for every branch."""

    def __init__(self, noise_maps: torch.Tensor):
        self.noise_maps = noise_maps

    def step(self, ctx: StepContext, state: torch.Tensor, predict: Callable[[torch.Tensor], torch.Tensor],
             prediction_type: str) -> torch.Tensor:
        mean = float64(ddpm_mean(state, predict(state), ctx.alpha, ctx.alpha_prev, prediction_type))
        z = self.noise_maps[ctx.step].to(mean.device)  # (F, C, h, w) float64, broadcast over branches
        return (mean + _noise_scale(ctx.alpha, ctx.alpha_prev) * z).to(state.device, state.dtype)


def ddpm_replay(inv: Inversion, ctx: ReplayContext, config: DDPMInversionConfig) -> Replay:
    """DDPM sampling with the extracted noise maps."""
    warn_if_guidance_differs("ddpm", config.guidance, ctx)
    return Replay(sampler=DDPMSampler(inv.extras["noise_maps"]))


# with noise="frame" the noise is drawn for the batch, and a frame's depends on its place in it
@register_inversion("ddpm", DDPMInversionConfig, replay=ddpm_replay,
                    independent_frames=lambda config: config.noise == "shared")
@torch.no_grad()
def ddpm_inversion(inp: InversionInputs, config: DDPMInversionConfig) -> Inversion:
    """Edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024, Alg. 1): noise maps, eta = 1."""
    s, n = inp.schedule, len(inp.schedule)
    skip = config.skip_steps(n)
    x0 = inp.latents.float()  # (F, C, h, w)
    gen = torch.Generator(device=x0.device).manual_seed(inp.seed)
    draws = 1 if config.noise == "shared" else x0.shape[0]
    eps = torch.randn((n, draws, *x0.shape[1:]), generator=gen, device=x0.device, dtype=x0.dtype)  # (N, 1|F, C, h, w)
    alphas = s.alphas.to(x0.device, x0.dtype).view(n, 1, 1, 1, 1)
    traj = torch.cat([alphas.sqrt() * x0 + (1 - alphas).sqrt() * eps, x0[None]])  # Eq. 6: (N+1, F, C, h, w)
    # float64 maps: mu + sigma z then lands on x_{i+1} to the last bit, so the replay is exact
    # whatever the UNet's precision (it recomputes the very same mu from the very same x_i).
    maps = float64(torch.zeros_like(traj[:-1]))  # (N, F, C, h, w)
    info = CallInfo(inverting=True)
    for i in tqdm(range(skip, n), desc="invert", disable=not inp.progress, leave=False):
        info.step = i
        x = traj[i][None]  # (1, F, C, h, w)
        out = predict_noise(inp.unet, x, int(s.timesteps[i]), inp.cond, inp.uncond, (config.guidance,),
                            batch_size=inp.batch_size, info=info)
        alpha, alpha_next = float(s.alphas[i]), float(s.alphas_prev[i])
        mean = ddpm_mean(x, out, alpha, alpha_next, inp.prediction_type)[0]
        maps[i] = (float64(traj[i + 1]) - float64(mean)) / _noise_scale(alpha, alpha_next)  # Eq. 7
    evals = (n - skip) * (2 if config.guidance != 1 else 1)
    return Inversion(method="ddpm", trajectory=traj, extras={"noise_maps": maps}, unet_evals=evals, start_step=skip,
                     frame_axes={"noise_maps": 1})
