"""Every UNet call goes through :func:`call_unet`, which adds what the model needs beyond the
noisy latents, the timestep and the text:

- **SDXL's micro-conditioning** (``addition_embed_type == "text_time"``): the pooled text
  embedding travels inside the text embeddings, as one extra last row (:func:`pack_pooled`), so
  that every editor and inversion that swaps, blends or optimises text embeddings per branch
  moves the pooled embedding with them; :func:`call_unet` splits it off and adds ``time_ids``
  (original size, crop corner, target size: the working size, no crop, as diffusers'
  ``StableDiffusionXLPipeline`` does by default).
- **Inputs installed for a stage** with :func:`unet_inputs` (a context manager, restored in
  ``finally``): a :class:`UnetInput` such as a ControlNet's residuals or InstructPix2Pix's
  source-image channels. Each sees the call's batch as ``(guidance half, branch, frame)``
  (:class:`videdit.core.loop.CallInfo`) and returns the call with its additions.
"""

from __future__ import annotations

import dataclasses
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from videdit.core import deepcache

# unet -> the UnetInputs installed on it, outermost first
_INSTALLED: "weakref.WeakKeyDictionary[Any, tuple[UnetInput, ...]]" = weakref.WeakKeyDictionary()
# unet -> its pixels per latent (the VAE's factor), for SDXL's time_ids; 8 where not registered
_PIXELS_PER_LATENT: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


@dataclass
class UnetCall:
    """One UNet call's arguments. ``sample`` (B, C, h, w) and ``text`` (B, L, D) are ordered
    ``(guidance half, branch, frame)``; ``kwargs`` go to the UNet as keywords
    (``added_cond_kwargs``, ``down_block_additional_residuals``, ...)."""

    sample: torch.Tensor
    timestep: torch.Tensor
    text: torch.Tensor
    info: Any                    # the CallInfo in flight: frames, branches, halves
    kwargs: dict = field(default_factory=dict)


class UnetInput:
    """An extra input of every UNet call while installed with :func:`unet_inputs`."""

    def add(self, unet, call: UnetCall) -> UnetCall:
        """``call`` with this input's additions (a new or the same :class:`UnetCall`)."""
        return call


@contextmanager
def unet_inputs(unet, inputs: Sequence[UnetInput]) -> Iterator[None]:
    """Add ``inputs`` to every call of ``unet`` inside the block (after those installed
    already); the previous set is back in ``finally``."""
    before = _INSTALLED.get(unet, ())
    _INSTALLED[unet] = (*before, *inputs)
    try:
        yield
    finally:
        if before:
            _INSTALLED[unet] = before
        else:
            _INSTALLED.pop(unet, None)


def installed(unet) -> tuple[UnetInput, ...]:
    return _INSTALLED.get(unet, ())


def set_pixels_per_latent(unet, factor: int) -> None:
    """Record the VAE factor of ``unet``'s model (SDXL's time_ids are in pixels)."""
    _PIXELS_PER_LATENT[unet] = int(factor)


def is_sdxl(unet) -> bool:
    """Whether ``unet`` takes SDXL's pooled text embedding and time ids."""
    return getattr(getattr(unet, "config", None), "addition_embed_type", None) == "text_time"


def pooled_dim(unet) -> int:
    """Width of the pooled text embedding an SDXL UNet takes: its added-embedding input less
    the six time ids' sinusoidal embeddings."""
    return int(unet.config.projection_class_embeddings_input_dim) - 6 * int(unet.config.addition_time_embed_dim)


def pack_pooled(hidden: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """(B, L, D) token embeddings and (B, P) pooled embeddings -> (B, L + 1, D): the pooled one
    zero-padded into an extra last row (P <= D: SDXL's 1280 <= 2048)."""
    if pooled.shape[-1] > hidden.shape[-1]:
        raise ValueError(f"a pooled embedding of width {pooled.shape[-1]} does not fit a row of {hidden.shape[-1]}")
    row = hidden.new_zeros(*hidden.shape[:-2], 1, hidden.shape[-1])
    row[..., 0, :pooled.shape[-1]] = pooled
    return torch.cat([hidden, row], dim=-2)


def unpack_pooled(text: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_pooled`: (B, L + 1, D) -> (B, L, D) tokens and (B, width) pooled."""
    return text[..., :-1, :], text[..., -1, :width]


def time_ids(unet, latent_size: tuple[int, int], batch: int, like: torch.Tensor) -> torch.Tensor:
    """SDXL's ``add_time_ids`` for a working size without crop: (original H, W, crop top, left,
    target H, W) -> (batch, 6)."""
    factor = _PIXELS_PER_LATENT.get(unet, 8)
    h, w = (int(s) * factor for s in latent_size)
    return like.new_tensor([h, w, 0, 0, h, w]).expand(batch, 6)


def model_call(unet, call: UnetCall) -> UnetCall:
    """``call`` with the model's own inputs (SDXL's) and every installed :class:`UnetInput`'s."""
    if is_sdxl(unet) and "added_cond_kwargs" not in call.kwargs:
        text, pooled = unpack_pooled(call.text, pooled_dim(unet))
        ids = time_ids(unet, tuple(call.sample.shape[-2:]), len(call.sample), pooled)
        call = dataclasses.replace(call, text=text,
                                   kwargs={**call.kwargs, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids}})
    for extra in installed(unet):
        call = extra.add(unet, call)
    return call


def call_unet(unet, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, info: Any) -> torch.Tensor:
    """The UNet's output for one batch (B, C, h, w), with the model's and the installed inputs
    (outside inversion through the feature caching installed on it, :mod:`videdit.core.deepcache`)."""
    call = model_call(unet, UnetCall(sample=sample, timestep=timestep, text=text, info=info))
    cache = deepcache.active(unet)
    if cache is not None and not getattr(info, "inverting", False):
        return cache.forward(unet, call)
    return unet(call.sample, call.timestep, encoder_hidden_states=call.text, **call.kwargs).sample
