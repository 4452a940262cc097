"""Edit-friendly DDPM inversion (Huberman-Spiegelglas, Kulikov & Michaeli 2024, "An edit
friendly DDPM noise space: inversion and manipulations", CVPR; Eqs. 6-7, Alg. 1). Defaults
follow the official code, inbarhub/DDPM_inversion: ``main_run.py`` (``--cfg_src 3.5``,
``--cfg_tar 15``, ``--num_diffusion_steps 100``, ``--skip 36``, eta 1) and
``ddm_inversion/inversion_utils.py`` (``sample_xts_from_x0``, ``inversion_forward_process``,
``inversion_reverse_process``).

The noisy latents are drawn independently of one another (Eq. 6),

    x_i = sqrt(a_i) x_0 + sqrt(1 - a_i) eps_i,    eps_i ~ N(0, I) independent per step,

and the noise maps are whatever makes DDPM sampling (eta = 1) pass through them (Eq. 7):

    z_i = (x_{i+1} - mu_i(x_i)) / sigma_i,

so sampling ``x_{i+1} = mu_i(x_i) + sigma_i z_i`` from x_0's noisy version reproduces the
trajectory. Editing re-runs that sampler under the target prompt with the same maps (every
branch uses the same maps). The mean mu_i is taken under classifier-free guidance at
``guidance`` (the reference's source guidance, 3.5); the edit samples at its own guidance
(the reference's target guidance, 15), so the reference does not give the source back
exactly, by design.

The reference's T_skip is the edit's strength (``EditSettings.strength``, 0.64 by default:
36 of 100 steps skipped): editing starts at step N - int(N * strength) from that step's x_i;
the steps before it are not inverted (their maps are zeros) and cost nothing.

``inversion_forward_process`` sets the last step's map to zero once the loop is done
(``zs[0] = 0``), so the last step of the edit is the deterministic mean mu(x_1) and lands
sigma_1 z_1 off the source (``zero_last``). Keeping that map (``zero_last=False``, what
LEDITS++'s inversion does, diffusers' ``LEditsPPPipelineStableDiffusion.invert``) makes the
replay exact at the guidance the maps were taken at: the maps are kept in float64, so that
the replay lands on the trajectory to the last bit and stays exact with an fp16/bf16 UNet
too (it recomputes the same mu_i from the same x_i). Where sigma_i = 0 (a final alpha-bar of
1) the kept map holds the residual itself.

The noise is seeded by the edit's seed and drawn for every step (:func:`draw_noise`), so a
strength does not change the draws of the steps it keeps. The reference edits one image; a
clip's frames share one draw here (``noise="shared"``, the default): eps_i is one draw for
every frame, the same in every batch and window, so frames that look alike stay alike through
the trajectory and the edit: on the toy clips this lowers the warp error of independent
per-frame editing below a draw per frame's (``noise="frame"``, drawn for the batch), with as
many frames edited (docs/video.md). One frame alone gets the same noise either way. The mean
here is our own pure ``ddpm_mean`` on videdit's schedule, and frames go through the UNet in
batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from videdit.core.ddpm import ddpm_mean, ddpm_sigma
from videdit.core.loop import CallInfo, Sampler, StepContext, predict_noise
from videdit.errors import VideditError
from videdit.inversion._exact import float64
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, Replay, ReplayContext, register_inversion
from videdit.progress import progress_bar
from videdit.registry import departs, improved

NOISE = ("shared", "frame")
REFERENCE = ("Huberman-Spiegelglas, Kulikov & Michaeli 2024, An edit friendly DDPM noise space (CVPR); "
             "github.com/inbarhub/DDPM_inversion (main_run.py, ddm_inversion/inversion_utils.py)")


@dataclass(frozen=True)
class DDPMInversionConfig:
    guidance: float | None = 3.5   # the source guidance of the maps' means (--cfg_src); None: the edit's guidance
    zero_last: bool = improved(True, better=False, why=(
        "keeps the last step's noise map, as LEDITS++ does: the replay at the maps' guidance gives the source "
        "back exactly (relative error 0; zeroed, 4.1e-2 on tiny-random's wolf frames at 10 steps and guidance 7.5, "
        "tests/inversion/test_ddpm.py)"))
    noise: str = departs("shared", official="frame", why=(
        "video: one draw for all of a clip's frames keeps frames that look alike alike (lower warp error of "
        "per-frame edits, docs/video.md); the reference edits one image, where both are the same"))

    def __post_init__(self):
        if self.guidance is not None and not 0 <= self.guidance <= 50:
            raise VideditError(f"ddpm guidance must be in [0, 50] (the reference's source guidance is 3.5), "
                               f"got {self.guidance}")
        if self.noise not in NOISE:
            raise VideditError(f"ddpm noise must be one of {list(NOISE)}, got {self.noise!r}")


def draw_noise(latents: torch.Tensor, n_steps: int, seed: int, noise: str = "shared") -> torch.Tensor:
    """The Eq. 6 noise of every step for clean latents (F, C, h, w): (N, 1, C, h, w) drawn once
    for all frames (``noise="shared"``) or (N, F, C, h, w) drawn for the batch (``"frame"``);
    ``[i]`` is step i's (schedule order, the noisiest first)."""
    gen = torch.Generator(device=latents.device).manual_seed(seed)
    draws = 1 if noise == "shared" else latents.shape[0]
    return torch.randn((n_steps, draws, *latents.shape[1:]), generator=gen, device=latents.device,
                       dtype=torch.float32)


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
    """DDPM sampling with the extracted noise maps (at the edit's guidance, which the reference
    sets apart from the maps' own)."""
    return Replay(sampler=DDPMSampler(inv.extras["noise_maps"]))


# with noise="frame" the noise is drawn for the batch, and a frame's depends on its place in it
@register_inversion("ddpm", DDPMInversionConfig, replay=ddpm_replay,
                    independent_frames=lambda config: config.noise == "shared", reference=REFERENCE,
                    steps=100, guidance=15.0, strength=0.64)
@torch.no_grad()
def ddpm_inversion(inp: InversionInputs, config: DDPMInversionConfig) -> Inversion:
    """Edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024, Alg. 1): noise maps, eta = 1."""
    s, n, start = inp.schedule, len(inp.schedule), inp.start_step
    x0 = inp.latents.float()  # (F, C, h, w)
    eps = draw_noise(x0, n, inp.seed, config.noise)  # (N, 1|F, C, h, w)
    alphas = s.alphas.to(x0.device, x0.dtype).view(n, 1, 1, 1, 1)
    traj = torch.cat([alphas.sqrt() * x0 + (1 - alphas).sqrt() * eps, x0[None]])  # Eq. 6: (N+1, F, C, h, w)
    # float64 maps: mu + sigma z then lands on x_{i+1} to the last bit, so the replay is exact
    # whatever the UNet's precision (it recomputes the very same mu from the very same x_i).
    maps = float64(torch.zeros_like(traj[:-1]))  # (N, F, C, h, w)
    info = CallInfo(inverting=True)
    for i in progress_bar(range(start, n), desc="invert", disable=not inp.progress, leave=False):
        info.step = i
        x = traj[i][None]  # (1, F, C, h, w)
        out = predict_noise(inp.unet, x, int(s.timesteps[i]), inp.cond, inp.uncond, (config.guidance,),
                            batch_size=inp.batch_size, info=info)
        alpha, alpha_next = float(s.alphas[i]), float(s.alphas_prev[i])
        mean = ddpm_mean(x, out, alpha, alpha_next, inp.prediction_type)[0]
        maps[i] = (float64(traj[i + 1]) - float64(mean)) / _noise_scale(alpha, alpha_next)  # Eq. 7
    if config.zero_last:   # inversion_forward_process: zs[0] = 0 after the loop, the last step is mu(x_1)
        maps[-1] = 0
    evals = (n - start) * (2 if config.guidance != 1 else 1)
    return Inversion(method="ddpm", trajectory=traj, extras={"noise_maps": maps}, unet_evals=evals, start_step=start,
                     frame_axes={"noise_maps": 1})
