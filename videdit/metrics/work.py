"""Counting the work an edit does: what really ran through the UNet, the ControlNets and the VAE.

:func:`count_work` installs forward pre-hooks on a model's UNet, its VAE's encoder and decoder
and on every ControlNet that runs inside the block (removed in ``finally``), and counts calls
and batch rows (frames) per *stage*: ``"invert"`` inside :func:`stage` ``("invert")``
(:func:`videdit.pipeline.invert_frames` runs under it), ``"edit"`` elsewhere. A UNet batch row
is one frame evaluated once: a guided two-branch step of one frame is 4 rows (unconditional
and conditional half of the source and the target branch).

FLOPs are counted once per network by :class:`torch.utils.flop_counter.FlopCounterMode` on one
call of Stable Diffusion 1.5's architecture (SD15_UNET, SD15_VAE) at 512x512 built on the meta
device (no weights, no arithmetic), so a count taken on tiny-random prices the same work at the
size people run: :func:`sd15_flops`, :meth:`WorkCount.flops`. The UNet's count includes its
attention matmuls (scores and weighted sum: 126 GFLOP of the 803 at 512x512); the ControlNet's
work is counted in rows, not FLOPs.
"""

from __future__ import annotations

import contextlib
import functools
from collections import defaultdict
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterator

import torch

STAGES = ("invert", "edit")
_STAGE: ContextVar[str] = ContextVar("videdit_work_stage", default="edit")

# Stable Diffusion 1.5's UNet and VAE (stable-diffusion-v1-5's unet/ and vae/ config.json)
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, sample_size=512, scaling_factor=0.18215)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Calls counted inside the block (and the functions it decorates) belong to stage ``name``."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; choose from {STAGES}")
    token = _STAGE.set(name)
    try:
        yield
    finally:
        _STAGE.reset(token)


@dataclass
class Tally:
    calls: int = 0
    rows: int = 0   # batch rows: frames through the network, one per frame per call


@dataclass
class WorkCount:
    """Calls and batch rows per network (``"unet"``, ``"controlnet"``, ``"vae_encoder"``,
    ``"vae_decoder"``) and stage (``"invert"``, ``"edit"``), filled by :func:`count_work`."""

    tallies: dict = field(default_factory=lambda: defaultdict(Tally))   # (network, stage) -> Tally

    def rows(self, network: str, stage: str | None = None) -> int:
        """Batch rows through ``network`` in ``stage`` (None: both)."""
        return sum(t.rows for (n, s), t in self.tallies.items() if n == network and stage in (None, s))

    def calls(self, network: str, stage: str | None = None) -> int:
        return sum(t.calls for (n, s), t in self.tallies.items() if n == network and stage in (None, s))

    def flops(self, stage: str | None = None) -> float:
        """FLOPs of the UNet rows and VAE frames at SD 1.5's architecture and 512x512
        (:func:`sd15_flops`; the ControlNet's not included)."""
        f = sd15_flops()
        return (self.rows("unet", stage) * f["unet"] + self.rows("vae_encoder", stage) * f["vae_encoder"]
                + self.rows("vae_decoder", stage) * f["vae_decoder"])

    def per_frame(self, frames: int) -> dict[str, float]:
        """The table's row for an edit of ``frames`` output frames: everything per output frame."""
        return {"unet_invert": self.rows("unet", "invert") / frames, "unet_edit": self.rows("unet", "edit") / frames,
                "unet_calls": self.calls("unet") / frames, "controlnet": self.rows("controlnet") / frames,
                "vae_encoded": self.rows("vae_encoder") / frames, "vae_decoded": self.rows("vae_decoder") / frames,
                "tflop": self.flops() / frames / 1e12}


def _batch_rows(args: tuple, kwargs: dict) -> int:
    x = args[0] if args else next(iter(kwargs.values()))
    return int(x.shape[0])


@contextlib.contextmanager
def count_work(model) -> Iterator[WorkCount]:
    """A :class:`WorkCount` of the calls of ``model``'s UNet, VAE encoder and decoder and of any
    ControlNet inside the block (forward pre-hooks, removed in ``finally``; ControlNets are found
    by a global module pre-hook, as they are loaded per edit)."""
    from diffusers import ControlNetModel

    count = WorkCount()

    def hook_for(network: str):
        def hook(module, args, kwargs):
            t = count.tallies[network, _STAGE.get()]
            t.calls += 1
            t.rows += _batch_rows(args, kwargs)
        return hook

    controlnet = hook_for("controlnet")

    def any_module(module, args):   # the global hook gets no kwargs: ControlNets take the sample first
        if isinstance(module, ControlNetModel) and args:
            controlnet(module, args, {})

    handles = [model.unet.register_forward_pre_hook(hook_for("unet"), with_kwargs=True),
               model.vae.encoder.register_forward_pre_hook(hook_for("vae_encoder"), with_kwargs=True),
               model.vae.decoder.register_forward_pre_hook(hook_for("vae_decoder"), with_kwargs=True),
               torch.nn.modules.module.register_module_forward_pre_hook(any_module)]
    try:
        yield count
    finally:
        for h in handles:
            h.remove()


@functools.cache
def sd15_flops() -> dict[str, float]:
    """FLOPs of one frame through SD 1.5's UNet (latents 64x64, 77 text tokens), VAE encoder
    (512x512 pixels) and decoder, counted by FlopCounterMode on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    def counted(fn) -> float:
        with FlopCounterMode(display=False) as fc:
            fn()
        return float(fc.get_total_flops())

    with torch.device("meta"), torch.no_grad():
        unet, vae = UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD15_VAE)
        z, text = torch.zeros(1, 4, 64, 64), torch.zeros(1, 77, 768)
        return {"unet": counted(lambda: unet(z, torch.tensor([500]), encoder_hidden_states=text)),
                "vae_encoder": counted(lambda: vae.encoder(torch.zeros(1, 3, 512, 512))),
                "vae_decoder": counted(lambda: vae.decoder(z))}
