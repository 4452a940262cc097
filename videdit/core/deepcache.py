"""Feature caching across steps: DeepCache (Ma, Fang & Wang, CVPR 2024; github.com/horseee/DeepCache,
``DeepCacheSDHelper`` with ``skip_mode="uniform"``), for the edit's UNet calls inside a ``with`` block.

A UNet's deep features change slowly from step to step; its shallow ones carry the detail. Every
``interval``-th step of the schedule (``step % interval == 0``, as the helper counts the scheduler's
steps) runs the whole UNet and keeps the hidden state entering the last up block's layer
``R - 1 - branch`` (R: that block's resnets; the helper's ``cache_branch_id`` within its first
block, ``cache_layer_id = branch``). The steps between run only what that branch needs fresh:
``conv_in``, the first ``branch`` layers (resnet and attention) of the first down block, whose
outputs are the skip features, then the last ``branch + 1`` layers of the last up block on the kept
state, and the output head. Branch 0 (the helper's default and the fastest) runs ``conv_in``, one
resnet and one transformer at full resolution, and ``conv_out``. The helper returns every skipped
module's last output in place of running it; here the skipped modules are not called at all,
which gives the same numbers where they are deterministic.

A kept state belongs to one frame batch of the loop (``CallInfo.batch``, the pivotal pass, the
call's rows): each batch is cached on its own. A batch without a kept state runs whole. The
inversion never uses the cache. Attention modules on layers a shallow step skips are not called
then (an editor's cross-attention edit in the deep layers acts through the kept state); shallow
steps are not UNet calls for :mod:`videdit.metrics.work`. A ControlNet's residuals, added at
every down block, are refused.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from videdit.errors import VideditError

NO_CONTROLNET = ("deepcache skips the down blocks a ControlNet adds its residuals to; edit without --deepcache or "
                 "without the ControlNet")
# unet -> the caching installed on it
_ACTIVE: "weakref.WeakKeyDictionary[Any, FeatureCache]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class FeatureCaching:
    """DeepCache's options, with the defaults of its README and of diffusers' DeepCache page."""

    interval: int = 3   # cache_interval: the whole UNet every this many steps (1: every step, no caching)
    branch: int = 0     # cache_branch_id within the first block: 0 the shallowest and fastest

    def __post_init__(self):
        for name, low in (("interval", 1), ("branch", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise VideditError(f"deepcache {name} must be a whole number >= {low}, got {value!r}")


def feature_caching_options(value: Any) -> dict | None:
    """``--deepcache INTERVAL`` or a config's ``deepcache:`` (an interval, or a mapping of
    :class:`FeatureCaching` options) -> the options; None stays None (off)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return {"interval": value}
    raise VideditError(f"deepcache must be an interval (e.g. 3) or a mapping of its options (interval, branch), "
                       f"got {value!r}")


@dataclass
class FeatureCache:
    """The caching installed on one UNet: its options, the kept states and what ran."""

    config: FeatureCaching
    kept: dict = field(default_factory=dict)   # (batch, pivotal, rows, frames) -> (B, C, h, w)
    full: int = 0       # calls that ran the whole UNet
    shallow: int = 0    # calls that ran the shallow path

    def forward(self, unet, call) -> torch.Tensor:
        """The UNet's output for ``call`` (a :class:`videdit.core.conditioning.UnetCall`)."""
        info = call.info
        if call.kwargs.get("down_block_additional_residuals") is not None:
            raise VideditError(NO_CONTROLNET)
        key = (info.batch, info.pivotal, tuple(info.rows()), tuple(info.frames))
        if info.step % self.config.interval == 0 or key not in self.kept:
            self.full += 1
            out, self.kept[key] = _whole(unet, call, self.config.branch)
            return out
        self.shallow += 1
        return _shallow(unet, call, self.kept[key], self.config.branch)


def _layers(unet, branch: int) -> tuple[Any, Any, int]:
    """(first down block, last up block, the up block's first layer the shallow path runs)."""
    down, up = unet.down_blocks[0], unet.up_blocks[-1]
    if len(up.resnets) != len(down.resnets) + 1 or getattr(up, "upsamplers", None):
        raise VideditError("deepcache needs a UNet whose last up block mirrors its first down block "
                           "(Stable Diffusion's)")
    if branch > len(down.resnets):
        raise VideditError(f"deepcache branch {branch} is past this UNet's first block (branches 0-{len(down.resnets)})")
    return down, up, len(up.resnets) - 1 - branch


def _whole(unet, call, branch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole UNet's output, and the hidden state entering the up block's layer the shallow
    path starts at (before its skip feature is concatenated)."""
    _, up, first = _layers(unet, branch)
    before = unet.up_blocks[-2] if first == 0 else (up.attentions[first - 1] if _attentions(up) else
                                                    up.resnets[first - 1])
    kept = []
    handle = before.register_forward_hook(
        lambda module, args, out: kept.append(out[0] if isinstance(out, tuple) else getattr(out, "sample", out)))
    try:
        out = unet(call.sample, call.timestep, encoder_hidden_states=call.text, **call.kwargs).sample
    finally:
        handle.remove()
    return out, kept[-1]


def _attentions(block) -> list | None:
    attentions = getattr(block, "attentions", None)
    return list(attentions) if attentions else None


def _shallow(unet, call, kept: torch.Tensor, branch: int) -> torch.Tensor:
    """conv_in, the first down block's first ``branch`` layers, the last up block's last ``branch + 1``
    layers from ``kept``, and the output head: diffusers' ``UNet2DConditionModel.forward`` on the
    modules a DeepCache step runs."""
    down, up, first = _layers(unet, branch)
    sample, timestep, added = call.sample, call.timestep, call.kwargs.get("added_cond_kwargs")
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
    class_emb = unet.get_class_embed(sample=sample, class_labels=None)
    if class_emb is not None:
        emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
    aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=call.text, added_cond_kwargs=added)
    emb = emb + aug if aug is not None else emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    text = unet.process_encoder_hidden_states(encoder_hidden_states=call.text, added_cond_kwargs=added)
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    h = unet.conv_in(sample)
    skips = [h]                                          # conv_in, then the first down block's layers
    down_attn = _attentions(down)
    for i in range(branch):
        h = down.resnets[i](h, emb)
        if down_attn:
            h = down_attn[i](h, encoder_hidden_states=text, return_dict=False)[0]
        skips.append(h)
    h, up_attn, n_down = kept, _attentions(up), len(down.resnets)
    for j in range(first, len(up.resnets)):              # layer j takes skip feature n_down - j
        h = up.resnets[j](torch.cat([h, skips[n_down - j]], dim=1), emb)
        if up_attn:
            h = up_attn[j](h, encoder_hidden_states=text, return_dict=False)[0]
    if unet.conv_norm_out is not None:
        h = unet.conv_act(unet.conv_norm_out(h))
    return unet.conv_out(h)


def active(unet) -> FeatureCache | None:
    """The caching installed on ``unet``, if any."""
    return _ACTIVE.get(unet)


@contextmanager
def feature_caching(unet, config: FeatureCaching | None) -> Iterator[FeatureCache | None]:
    """DeepCache on ``unet``'s calls outside inversion for the ``with`` block (``config`` None:
    nothing); yields the :class:`FeatureCache`. Removed in ``finally``."""
    if config is None:
        yield None
        return
    _layers(unet, config.branch)   # refused before any step
    if unet in _ACTIVE:
        raise VideditError("deepcache is already on for this UNet")
    cache = _ACTIVE[unet] = FeatureCache(config)
    try:
        yield cache
    finally:
        _ACTIVE.pop(unet, None)
