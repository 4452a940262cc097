"""Plain DDIM inversion (Song et al. 2021; Dhariwal & Nichol 2021, Eq. 13)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from videdit.core.ddim import ddim_inverse_step
from videdit.core.loop import CallInfo, predict_noise
from videdit.errors import VideditError
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, register_inversion


@dataclass(frozen=True)
class DDIMInversionConfig:
    guidance: float = 1.0  # classifier-free guidance while inverting (1 = conditional only)

    def __post_init__(self):
        if not 0 <= self.guidance <= 50:
            raise VideditError(f"ddim inversion guidance must be in [0, 50], got {self.guidance}")


@register_inversion("ddim", DDIMInversionConfig, reference="Song et al. 2021, DDIM (ICLR); the inversion loop of google/prompt-to-prompt null_text_w_ptp.ipynb (ddim_loop) and diffusers' DDIMInverseScheduler")
@torch.no_grad()
def ddim_inversion(inp: InversionInputs, config: DDIMInversionConfig) -> Inversion:
    """DDIM inversion: run the deterministic sampler backwards, eps(z_{t-1}, t) for eps(z_t, t)."""
    s = inp.schedule
    x = inp.latents.float()[None]  # (1, F, C, h, w)
    info = CallInfo(inverting=True)
    path = [x[0]]
    for i in tqdm(reversed(range(len(s))), total=len(s), desc="invert", disable=not inp.progress, leave=False):
        info.step = i
        out = predict_noise(inp.unet, x, int(s.timesteps[i]), inp.cond, inp.uncond, (config.guidance,),
                            batch_size=inp.batch_size, info=info)
        x = ddim_inverse_step(x, out, float(s.alphas_prev[i]), float(s.alphas[i]), inp.prediction_type)
        path.append(x[0])
    evals = len(s) * (2 if config.guidance != 1 else 1)
    return Inversion(method="ddim", trajectory=torch.stack(path[::-1]), unet_evals=evals)
