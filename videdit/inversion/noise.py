"""No inversion: seeded Gaussian noise, as InstructPix2Pix (Brooks et al. 2023) and Text2Video-Zero
(Khachatryan et al. 2023) start, and as diffusers' pipelines draw their initial latents.

The record's ``trajectory[0]`` is one N(0, I) draw of the frames' latents (F, C, h, w) from a CPU
generator seeded with the edit's seed (``torch.randn`` on ``torch.Generator().manual_seed(seed)``,
what diffusers' ``prepare_latents`` draws with that generator; every device gets the same numbers,
and every window of a clip the same draws, as Text2Video-Zero reseeds each chunk). The later
entries are the source noised by the forward process with that draw, ``sqrt(a_i) z0 + sqrt(1 - a_i)
eps`` (diffusers' ``add_noise``), so an edit that starts at a later step (``strength`` < 1) is
SDEdit from the source, and ``trajectory[-1]`` is the clean source. No UNet runs.

``noise="shared"``: one draw of a single frame's latents (1, C, h, w), repeated over the frames, as
Text2Video-Zero's ControlNet variants start every frame from the same noise (model.py
``process_controlnet_canny``/``_pose``/``_depth``: ``torch.randn((1, 4, h // 8, w // 8))`` from the
seeded generator, ``latents.repeat(f, 1, 1, 1)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videdit.errors import VideditError
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, register_inversion
from videdit.registry import MODEL_FAMILIES


@dataclass(frozen=True)
class NoiseConfig:
    noise: str = "frame"   # "frame": a draw per frame (diffusers); "shared": one for all (T2V-Zero's ControlNet runs)

    def __post_init__(self):
        if self.noise not in NOISE:
            raise VideditError(f"noise inversion's noise must be one of {list(NOISE)}, got {self.noise!r}")


NOISE = ("frame", "shared")


def initial_noise(latents: torch.Tensor, seed: int, shared: bool = False) -> torch.Tensor:
    """One N(0, I) draw shaped like ``latents`` (F, C, h, w), from a CPU generator seeded with
    ``seed``, on their device; with ``shared``, one frame's draw (1, C, h, w) repeated F times."""
    gen = torch.Generator().manual_seed(seed)
    shape = (1, *latents.shape[1:]) if shared else latents.shape
    eps = torch.randn(shape, generator=gen, dtype=torch.float32)
    return eps.expand(latents.shape).contiguous().to(latents.device)


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
    """No inversion: seeded Gaussian noise, as InstructPix2Pix and Text2Video-Zero start (runs no UNet).

    ``noise="shared"``: one draw for every frame, as Text2Video-Zero's ControlNet runs start."""
    z0 = inp.latents.float()                                     # (F, C, h, w)
    eps = initial_noise(z0, inp.seed, shared=config.noise == "shared")
    a = inp.schedule.alphas[1:].to(z0).view(-1, 1, 1, 1, 1)     # (N - 1, 1, 1, 1, 1)
    noised = a.sqrt() * z0 + (1 - a).sqrt() * eps                # (N - 1, F, C, h, w)
    return Inversion(method="noise", trajectory=torch.cat([eps[None], noised, z0[None]]), unet_evals=0)
