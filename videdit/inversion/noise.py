"""No inversion: seeded Gaussian noise, as InstructPix2Pix (Brooks et al. 2023) and Text2Video-Zero
(Khachatryan et al. 2023) start, and as diffusers' pipelines draw their initial latents.

The record's ``trajectory[0]`` is one N(0, I) draw of the frames' latents (F, C, h, w) from a CPU
generator seeded with the edit's seed (``torch.randn`` on ``torch.Generator().manual_seed(seed)``,
what diffusers' ``prepare_latents`` draws with that generator; every device gets the same numbers,
and every window of a clip the same draws, as Text2Video-Zero reseeds each chunk). The later
entries are the source noised by the forward process with that draw, ``sqrt(a_i) z0 + sqrt(1 - a_i)
eps`` (diffusers' ``add_noise``), so an edit that starts at a later step (``strength`` < 1) is
SDEdit from the source, and ``trajectory[-1]`` is the clean source. No UNet runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, register_inversion
from videdit.registry import MODEL_FAMILIES


@dataclass(frozen=True)
class NoiseConfig:
    pass


def initial_noise(latents: torch.Tensor, seed: int) -> torch.Tensor:
    """One N(0, I) draw shaped like ``latents`` (F, C, h, w), from a CPU generator seeded with
    ``seed``, on their device."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(latents.shape, generator=gen, dtype=torch.float32).to(latents.device)


def after_initial_noise(shape: torch.Size, seed: int) -> torch.Generator:
    """The CPU generator of :func:`initial_noise` past its draw of ``shape``: diffusers draws the
    initial latents and then every step's noise from one generator, so a sampler drawing its
    noise from this one replays ``generator=torch.Generator().manual_seed(seed)``."""
    gen = torch.Generator().manual_seed(seed)
    torch.randn(shape, generator=gen, dtype=torch.float32)
    return gen


@register_inversion("noise", NoiseConfig, independent_frames=False, models={"families": MODEL_FAMILIES, "refuses": {}},
                    reference="Brooks, Holynski & Efros 2023, InstructPix2Pix (CVPR); Khachatryan et al. 2023, "
                    "Text2Video-Zero (ICCV): sampling starts from seeded Gaussian noise, diffusers' prepare_latents")
def noise(inp: InversionInputs, config: NoiseConfig) -> Inversion:
    """No inversion: seeded Gaussian noise, as InstructPix2Pix and Text2Video-Zero start (runs no UNet)."""
    z0 = inp.latents.float()                                     # (F, C, h, w)
    eps = initial_noise(z0, inp.seed)
    a = inp.schedule.alphas[1:].to(z0).view(-1, 1, 1, 1, 1)     # (N - 1, 1, 1, 1, 1)
    noised = a.sqrt() * z0 + (1 - a).sqrt() * eps                # (N - 1, F, C, h, w)
    return Inversion(method="noise", trajectory=torch.cat([eps[None], noised, z0[None]]), unet_evals=0)
