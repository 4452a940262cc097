"""SDEdit's start (Meng et al. 2022): the source latent noised by the forward process, no UNet.

``trajectory[i] = sqrt(a_i) z0 + sqrt(1 - a_i) n`` at every schedule step, with ONE noise
``n`` (C, h, w) drawn from the seed and shared by every frame: sampling from
``trajectory[start_step]`` (``strength``) is Rerender-A-Video's img2img start, which seeds
the generator again before each keyframe so that every keyframe starts from the same noise
(williamyang1991/Rerender_A_Video ``rerender.py``: ``seed_everything(seed)`` before each
``ddim_v_sampler.sample``, and ``src/ddim_v_hacked.py`` ``ddim_sampling``:
``img = self.model.q_sample(x0, ts)`` at step ``int(total_steps * strength)``, where
Rerender's ``x0_strength`` is videdit's ``strength``). ``pure_noise``: start from ``n``
alone, as Rerender does when ``x0_strength`` is outside (0, 1] (its default -1: the source
enters through ControlNet only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videdit.errors import VideditError
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, register_inversion


@dataclass(frozen=True)
class SDEditConfig:
    pure_noise: bool = False   # start from the seeded noise alone, not the noised source

    def __post_init__(self):
        if not isinstance(self.pure_noise, bool):
            raise VideditError(f"sdedit pure_noise must be true or false, got {self.pure_noise!r}")


def shared_noise(shape: tuple[int, ...], seed: int, like: torch.Tensor) -> torch.Tensor:
    """One frame's noise (C, h, w) from ``seed``, the same for every frame and every call."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=g, dtype=torch.float32).to(like.device)


@register_inversion("sdedit", SDEditConfig, reference="Meng et al. 2022, SDEdit (ICLR); as Rerender-A-Video starts "
                    "its keyframes: williamyang1991/Rerender_A_Video src/ddim_v_hacked.py (q_sample at "
                    "int(total_steps * strength)) with the seed set again before every keyframe (rerender.py)")
@torch.no_grad()
def sdedit_inversion(inp: InversionInputs, config: SDEditConfig) -> Inversion:
    """The source noised by the forward process with one seeded noise shared by all frames (no UNet)."""
    z0 = inp.latents.float()                                          # (F, C, h, w)
    n = shared_noise(tuple(z0.shape[1:]), inp.seed, z0)               # (C, h, w)
    a = inp.schedule.alphas.to(z0.device, torch.float32).view(-1, 1, 1, 1, 1)   # (N, 1, 1, 1, 1)
    if config.pure_noise:
        noisy = n.expand(len(a), *z0.shape)
    else:
        noisy = a.sqrt() * z0[None] + (1 - a).sqrt() * n              # (N, F, C, h, w)
    return Inversion(method="sdedit", trajectory=torch.cat([noisy, z0[None]]), unet_evals=0)
