"""Plain DDIM inversion (Song et al. 2021; Dhariwal & Nichol 2021, Eq. 13)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videdit.core.ddim import ddim_inverse_step, renoise
from videdit.core.loop import CallInfo, predict_noise
from videdit.core.schedule import Schedule
from videdit.errors import VideditError
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, register_inversion


START_NOISE = ("inverted", "renoised")


@dataclass(frozen=True)
class DDIMInversionConfig:
    guidance: float = 1.0  # classifier-free guidance while inverting (1 = conditional only)
    # invert through every training timestep between the edit's, keeping the latents at the edit's timesteps
    # (plug-and-play's preprocess.py: 999 steps, whose latents the 50-step edit loads)
    every_timestep: bool = False
    # invert through a schedule of this many steps, keeping the latents at the edit's timesteps (TokenFlow's
    # preprocess.py: --steps 500, saving the 50 of the edit); None: the edit's steps (every_timestep: all)
    inversion_steps: int | None = None
    # where the edit starts: "inverted", the inverted latent at the first timestep; "renoised", TokenFlow's
    # (preprocess.py inverts on to the top of its own schedule, 999 of 500 steps, and saves that latent;
    # run_tokenflow_pnp.py get_ddim_eps takes its noise given the clean latent, and edit_video starts from
    # scheduler.add_noise(latents, eps, timesteps[0])): the clean latent noised to the first timestep with
    # that noise. The source's latents stay the inverted ones.
    start_noise: str = "inverted"

    def __post_init__(self):
        if self.start_noise not in START_NOISE:
            raise VideditError(f"ddim inversion start_noise must be one of {list(START_NOISE)}, got "
                               f"{self.start_noise!r}")
        if not 0 <= self.guidance <= 50:
            raise VideditError(f"ddim inversion guidance must be in [0, 50], got {self.guidance}")
        if not isinstance(self.every_timestep, bool):
            raise VideditError(f"ddim inversion every_timestep must be true or false, got {self.every_timestep!r}")
        if self.inversion_steps is not None:
            if not isinstance(self.inversion_steps, int) or self.inversion_steps < 1:
                raise VideditError(f"ddim inversion inversion_steps must be a whole number >= 1, "
                                   f"got {self.inversion_steps!r}")
            if self.every_timestep:
                raise VideditError("ddim inversion every_timestep inverts through every training timestep; drop "
                                   "inversion_steps, or every_timestep")


def stride_of(s: Schedule, config: DDIMInversionConfig) -> int | None:
    """Training timesteps per inverse step: None (one per edit step), 1 (``every_timestep``) or
    that of ``config.inversion_steps``, which must land on the edit's timesteps."""
    if config.every_timestep:
        return 1
    if config.inversion_steps is None:
        return None
    train = len(s.alphas_cumprod)
    stride = train // config.inversion_steps
    gaps = {int(a - b) for a, b in zip(s.timesteps[:-1], s.timesteps[1:])}
    if config.inversion_steps > train or any(g % stride for g in gaps):
        raise VideditError(f"ddim inversion_steps {config.inversion_steps} does not pass through the edit's "
                           f"{len(s)} timesteps (spaced {sorted(gaps)}); give a multiple of the edit's steps "
                           f"that divides {train}")
    return stride


def inverse_steps(s: Schedule, i: int, every_timestep: bool = False,
                  stride: int | None = None) -> list[tuple[int, float, float]]:
    """The inverse DDIM steps from the latent that sampling step ``i`` lands on up to
    ``timesteps[i]``, each (timestep the UNet sees, alpha-bar from, alpha-bar to): one step,
    or one per ``stride`` training timesteps in between (``every_timestep``: stride 1). The
    last sampling step's (from the clean latent) stays one step, as in ``preprocess.py``,
    whose 999-step schedule (timesteps 999..1 on SD's 1000) starts at the final alpha and
    lands on timestep 1 (TokenFlow's 500-step one likewise, timesteps 999, 997, ..., 1)."""
    t = int(s.timesteps[i])
    stride = 1 if every_timestep else stride
    if stride is None or i + 1 == len(s):
        return [(t, float(s.alphas_prev[i]), float(s.alphas[i]))]
    acp = s.alphas_cumprod
    return [(k, float(acp[k - stride]), float(acp[k])) for k in range(int(s.timesteps[i + 1]) + stride, t + 1, stride)]


@register_inversion("ddim", DDIMInversionConfig, reference="Song et al. 2021, DDIM (ICLR); the inversion loop of google/prompt-to-prompt null_text_w_ptp.ipynb (ddim_loop) and diffusers' DDIMInverseScheduler")
@torch.no_grad()
def ddim_inversion(inp: InversionInputs, config: DDIMInversionConfig) -> Inversion:
    """DDIM inversion: run the deterministic sampler backwards, eps(z_{t-1}, t) for eps(z_t, t)."""
    s = inp.schedule
    x = inp.latents.float()[None]  # (1, F, C, h, w)
    info = CallInfo(inverting=True)
    path = [x[0]]
    evals, stride = 0, stride_of(s, config)
    for i in inp.inverse_steps():   # up to the edit's first step (strength < 1: the steps above go unread)
        info.step = i
        for t, alpha_from, alpha_to in inverse_steps(s, i, stride=stride):
            out = predict_noise(inp.unet, x, t, inp.cond, inp.uncond, (config.guidance,),
                                batch_size=inp.batch_size, info=info)
            x = ddim_inverse_step(x, out, alpha_from, alpha_to, inp.prediction_type)
            evals += 1
        path.append(x[0])
    extras = {}
    if config.start_noise == "renoised" and inp.start_step == 0:   # the edit starts from it at the first step only
        x, t_top, more = _on_to_the_top(inp, config, x, stride, info)
        extras["start"] = _renoised(s, path[0][None], x, t_top)[0]
        evals += more
    evals *= 2 if config.guidance != 1 else 1
    return Inversion(method="ddim", trajectory=inp.trajectory(path), extras=extras, unet_evals=evals,
                     start_step=inp.start_step)


def _on_to_the_top(inp: InversionInputs, config: DDIMInversionConfig, x: torch.Tensor, stride: int | None,
                   info: CallInfo) -> tuple[torch.Tensor, int, int]:
    """The inversion carried on from the first timestep to the top of its own schedule, in steps of
    ``stride`` (TokenFlow's 500-step schedule: 983, 985, ..., 999 after 981; none without a finer
    schedule than the edit's) -> (the latent there (1, F, C, h, w), its timestep, UNet evaluations)."""
    s, acp = inp.schedule, inp.schedule.alphas_cumprod
    t = int(s.timesteps[0])
    evals = 0
    while stride is not None and t + stride < len(acp):
        out = predict_noise(inp.unet, x, t + stride, inp.cond, inp.uncond, (config.guidance,),
                            batch_size=inp.batch_size, info=info)
        x = ddim_inverse_step(x, out, float(acp[t]), float(acp[t + stride]), inp.prediction_type)
        t, evals = t + stride, evals + 1
    return x, t, evals


def _renoised(s: Schedule, z0: torch.Tensor, top: torch.Tensor, t_top: int) -> torch.Tensor:
    """``top`` 's noise given the clean ``z0`` at timestep ``t_top`` (get_ddim_eps: eps =
    (z_T - sqrt(a_T) z0) / sqrt(1 - a_T)), put on ``z0`` at the first timestep (add_noise)."""
    a_top = float(s.alphas_cumprod[t_top])
    return renoise(z0, (top - a_top ** 0.5 * z0) / (1 - a_top) ** 0.5, float(s.alphas[0]))
