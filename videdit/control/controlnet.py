"""ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models"; github.com/lllyasviel/ControlNet) for every stage of an edit.

- :class:`ControlSpec`: one ``--control`` condition paired with one ``--controlnet MODEL[=SCALE]``.
- :func:`load_controlnet`: a hub id or a local diffusers ``ControlNetModel`` directory, or the
  built-in ``tiny-random`` (for tests), checked against the model's architecture.
- :class:`Control`: the loaded ControlNets with their conditions, for one clip; ``window`` gives a
  window's :class:`ControlFrames` (condition images per frame), whose :meth:`ControlFrames.input`
  is the :class:`~videdit.core.conditioning.UnetInput` that runs the ControlNets on each UNet
  call. The pipeline installs it for the inversion, the source branch and the edit alike, so all
  see the same condition (as Rerender-A-Video and RAVE do: RAVE's ``ddim_inversion`` in
  ``pipelines/sd_controlnet_rave.py`` adds the ControlNet's residuals while inverting): an exact
  inversion then replays.

Several ControlNets add their residuals, each at its own scale, as diffusers'
``MultiControlNetModel`` does; each is active on the fraction ``[start, end]`` of the schedule,
as diffusers' ``control_guidance_start/end``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from diffusers import ControlNetModel

from videdit import io
from videdit.attention.install import attention_processors
from videdit.control.conditions import Condition, ConditionFrames
from videdit.core.conditioning import UnetCall, UnetInput
from videdit.errors import VideditError

TINY_CONTROLNET = "tiny-random"
# the toy model's ControlNets (tools/train_toy_controlnet.py --condition KIND), package data beside the toy
# model: "toy-canny" (edges), "toy-depth", "toy-pose" (its world's depth and pose maps)
TOY_CONTROLNETS = {f"toy-{kind}": Path(__file__).resolve().parents[1] / "toy" / f"controlnet-{kind}"
                   for kind in ("canny", "depth", "pose")}
TOY_CONTROLNET = "toy-canny"
TOY_CONTROLNET_DIR = TOY_CONTROLNETS[TOY_CONTROLNET]
TINY_CONTROLNET_VERSION = "tiny-random-controlnet-v1"
TINY_CONTROLNET_SEED = 1
# ControlNet's condition encoder: 3 stride-2 convolutions (8x, the VAE's factor), narrow for tests
TINY_CONDITION_CHANNELS = (8, 8, 16, 16)
CONTROLNET_FILES = ["config.json", "diffusion_pytorch_model.safetensors"]   # what a hub ControlNet needs


@dataclass(frozen=True)
class ControlSpec:
    """One ControlNet and its condition: ``condition`` ("canny", "softedge", "depth=PATH", ...),
    ``controlnet`` (hub id, local directory or "tiny-random"), its conditioning ``scale``, and the
    fraction of the schedule ``[start, end]`` it acts on (diffusers' ``control_guidance_start/end``)."""

    condition: Condition | str
    controlnet: str
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "condition", Condition.parse(self.condition))
        if not isinstance(self.scale, (int, float)) or isinstance(self.scale, bool) or not 0 <= self.scale <= 10:
            raise VideditError(f"--controlnet {self.controlnet}: scale must be a number in [0, 10], got {self.scale!r}")
        if not 0 <= self.start < self.end <= 1:
            raise VideditError(f"--controlnet {self.controlnet}: start {self.start} and end {self.end} must be "
                               f"fractions of the steps with 0 <= start < end <= 1")

    @classmethod
    def of(cls, value: ControlSpec | Mapping | Sequence) -> ControlSpec:
        """A spec from itself, a mapping of its fields, or (condition, controlnet[, scale])."""
        if isinstance(value, ControlSpec):
            return value
        if isinstance(value, Mapping):
            return cls(**value)
        if isinstance(value, (tuple, list)) and 2 <= len(value) <= 3:
            return cls(*value)
        raise VideditError(f"a control is a ControlSpec, a mapping of its fields or (condition, controlnet[, scale]); "
                           f"got {value!r}")


def parse_controlnet(text: str) -> tuple[str, float]:
    """"MODEL" or "MODEL=SCALE" -> (model, scale); a trailing "=X" that is not a number is part of the name."""
    name, sep, scale = text.rpartition("=")
    if sep and name.strip():
        try:
            return name.strip(), float(scale)
        except ValueError:
            pass
    return text.strip(), 1.0


def pair_controls(conditions: Sequence[str], controlnets: Sequence[str]) -> list[ControlSpec]:
    """The k-th ``--control`` with the k-th ``--controlnet MODEL[=SCALE]``."""
    if len(conditions) != len(controlnets):
        raise VideditError(f"{len(conditions)} --control and {len(controlnets)} --controlnet given; the k-th "
                           f"--control pairs with the k-th --controlnet, so give as many of each")
    return [ControlSpec(condition, *parse_controlnet(net)) for condition, net in zip(conditions, controlnets)]


def tiny_controlnet(unet) -> ControlNetModel:
    """A ControlNet for tiny-random: :func:`random_controlnet` of its UNet with a small condition
    encoder, under a fixed seed."""
    return random_controlnet(unet, TINY_CONTROLNET_SEED, conditioning_embedding_out_channels=TINY_CONDITION_CHANNELS)


def random_controlnet(unet, seed: int, **config) -> ControlNetModel:
    """``ControlNetModel.from_unet`` of ``unet`` (its encoder's weights; ``config``: from_unet's
    options) under ``seed``. A ControlNet starts with zero convolutions on its outputs and on its
    condition encoder's last layer, so that an untrained one adds exactly nothing; these get
    PyTorch's default random initialisation instead, so that at scale 1 it changes the UNet's
    output (the tests tell a wired ControlNet from an unwired one by that)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ControlNetModel.from_unet(unet, **config)
        zero_convs = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
        for conv in zero_convs:
            conv.reset_parameters()
    return net


@dataclass
class LoadedControlNet:
    """A ControlNet on the model's device and dtype, with its name and weights' fingerprint."""

    name: str
    net: ControlNetModel
    fingerprint: str


def load_controlnet(spec: str, model) -> LoadedControlNet:
    """``spec``: "tiny-random" (tiny-random's ControlNet, :func:`tiny_controlnet`), "toy-canny",
    "toy-depth", "toy-pose" (the toy model's, trained on canny edges, depth or pose maps of its world:
    ``tools/train_toy_controlnet.py``), a local diffusers
    ControlNet directory (``ControlNetModel.save_pretrained``) or a hub id (downloaded into the
    Hugging Face cache on first use) -> the ControlNet on ``model``'s device and dtype, refused in
    one line where it does not fit ``model``'s UNet (:func:`check_fits`)."""
    from videdit.models.loading import _download, _fingerprint, _quiet_to

    spec = str(spec)
    if spec == TINY_CONTROLNET:
        net, fingerprint = tiny_controlnet(model.unet), TINY_CONTROLNET_VERSION
    else:
        path = TOY_CONTROLNETS.get(spec) or Path(spec).expanduser()
        if spec in TOY_CONTROLNETS and not (path / "config.json").exists():
            raise VideditError(f"{spec} is not in {path}: make it with tools/train_toy_controlnet.py --condition "
                               f"{spec.removeprefix('toy-')} --export {path}")
        if not path.exists():
            if path.is_absolute() or spec.startswith(".") or spec.count("/") != 1:
                raise VideditError(f"no ControlNet at {spec!r}: give a diffusers ControlNet directory, a hub id "
                                   f"(owner/name, e.g. lllyasviel/sd-controlnet-canny) or {TINY_CONTROLNET!r}")
            path = _download(spec, patterns=CONTROLNET_FILES, alternatives=(
                "use a local ControlNet directory (ControlNetModel.save_pretrained) or --controlnet tiny-random"))
        if not (path / "config.json").exists():
            raise VideditError(f"{path} is not a diffusers ControlNet directory (no config.json); save one with "
                               f"ControlNetModel.save_pretrained(path)")
        try:
            net = ControlNetModel.from_pretrained(path, low_cpu_mem_usage=False)
        except (OSError, ValueError, TypeError) as e:
            raise VideditError(f"cannot load the ControlNet in {path}: {e}".splitlines()[0]) from e
        fingerprint = _fingerprint(path)
    check_fits(net, model, spec)
    _quiet_to((net,), device=model.device, dtype=model.dtype)
    net.eval().requires_grad_(False)
    return LoadedControlNet(name=spec, net=net, fingerprint=fingerprint)


def condition_factor(net: ControlNetModel) -> int:
    """How much the ControlNet's condition encoder shrinks its image: one stride-2 convolution
    between each two of its channel counts."""
    return 2 ** (len(net.config.conditioning_embedding_out_channels) - 1)


def check_fits(net: ControlNetModel, model, name: str) -> None:
    """One line where the ControlNet was made for another architecture than ``model``'s UNet:
    text width, channels per block, latent channels, SDXL's added embeddings, or a condition
    encoder that does not shrink images to the latent size."""
    unet = model.unet.config
    wants = {"cross_attention_dim": unet.cross_attention_dim, "block_out_channels": tuple(unet.block_out_channels),
             "in_channels": unet.in_channels, "addition_embed_type": unet.get("addition_embed_type")}
    has = {"cross_attention_dim": net.config.cross_attention_dim,
           "block_out_channels": tuple(net.config.block_out_channels), "in_channels": net.config.in_channels,
           "addition_embed_type": net.config.get("addition_embed_type")}
    differ = [f"{k} {has[k]} (model: {wants[k]})" for k in wants if has[k] != wants[k]]
    if differ:
        raise VideditError(f"ControlNet {name!r} is for another architecture than {model.name!r} ({model.family}): "
                           f"{'; '.join(differ)}; use a ControlNet trained for the model's family")
    if condition_factor(net) != model.vae_scale_factor:
        raise VideditError(f"ControlNet {name!r} shrinks its condition {condition_factor(net)}x and {model.name!r} "
                           f"works at {model.vae_scale_factor} pixels per latent; use a ControlNet made for it")


@dataclass
class ControlFrames:
    """The ControlNets and their condition images for the frames being processed: ``images``
    (K, F, H, W, 3) uint8, the k-th ControlNet's condition for frame f of the latents in process."""

    nets: tuple[LoadedControlNet, ...]
    specs: tuple[ControlSpec, ...]
    images: np.ndarray

    def select(self, frames: Sequence[int] | None) -> ControlFrames:
        """Those frames' conditions (indices into F), for a stage that processes a subset."""
        if frames is None:
            return self
        return ControlFrames(self.nets, self.specs, self.images[:, list(frames)])

    def key(self) -> dict:
        """Cache-key terms: each ControlNet's weights, scale and steps, and the conditions' hash."""
        nets = [[n.fingerprint, s.scale, s.start, s.end] for n, s in zip(self.nets, self.specs)]
        return {"controlnets": nets, "conditions": hashlib.sha256(np.ascontiguousarray(self.images).data).hexdigest()}

    def input(self, timesteps: Sequence[int], uncontrolled: Sequence[int] = (), modules: Sequence = (),
              info=None) -> ControlNetInput:
        """The UNet input that runs the ControlNets on each call, on a schedule of ``timesteps``,
        adding nothing to the ``uncontrolled`` branches (a reference image's). ``modules``: attention
        modules on the ControlNets' layers (named ``controlnet{k}.`` + processor name), with the
        loop's ``info``."""
        from videdit.attention.processor import compose

        device, dtype = self.nets[0].net.device, self.nets[0].net.dtype
        images = torch.from_numpy(self.images).to(device).permute(0, 1, 4, 2, 3).to(dtype) / 255   # (K, F, 3, H, W)
        n = len(timesteps)
        active = []
        for spec in self.specs:   # diffusers' controlnet_keep: step i is kept unless i/N < start or (i+1)/N > end
            active.append(frozenset(int(t) for i, t in enumerate(timesteps)
                                    if not (i / n < spec.start or (i + 1) / n > spec.end)))
        return ControlNetInput(nets=tuple(n.net for n in self.nets), scales=tuple(s.scale for s in self.specs),
                               images=images, active=tuple(active), schedule=frozenset(int(t) for t in timesteps),
                               uncontrolled=frozenset(uncontrolled),
                               processors=tuple(compose(n.net, modules, info, prefix=f"controlnet{k}.") if modules
                                                else {} for k, n in enumerate(self.nets)))


@dataclass
class ControlNetInput(UnetInput):
    """Runs each ControlNet on a UNet call and adds the sum of their scaled residuals
    (``down_block_additional_residuals``, ``mid_block_additional_residual``). The condition of
    the call's frames (``info.frames``) is repeated over its guidance halves and branches, in the
    batch's order ``(half, branch, frame)``, as diffusers' ``StableDiffusionControlNetPipeline``
    gives both halves the image (``guess_mode=False``). A ControlNet is active at the schedule's
    timesteps in its ``[start, end]`` fraction (``active``), and at any timestep off the schedule.
    The ``uncontrolled`` branches (an editor's reference image, whose condition is not the
    clip's: ``EditPlan.uncontrolled``) get no residuals."""

    nets: tuple[ControlNetModel, ...]
    scales: tuple[float, ...]
    images: torch.Tensor              # (K, F, 3, H, W) in [0, 1]
    active: tuple[frozenset, ...]     # per ControlNet, the timesteps it acts at
    schedule: frozenset = field(default_factory=frozenset)
    uncontrolled: frozenset = field(default_factory=frozenset)   # branch indices
    processors: tuple = ()            # per ControlNet, {layer: processor} installed while it runs

    def add(self, unet, call: UnetCall) -> UnetCall:
        info = call.info
        frames = list(info.frames)
        rows = info.rows()   # (half, branch) in batch order: all of them unless a branch runs cond_only
        repeat = len(rows)
        if call.sample.shape[0] != repeat * len(frames) or max(frames, default=0) >= self.images.shape[1]:
            raise ValueError(f"a UNet call of {call.sample.shape[0]} latents for frames {tuple(frames)} x {repeat} "
                             f"does not match ControlNet conditions for {self.images.shape[1]} frames")
        t = int(call.timestep.flatten()[0])
        down, mid = None, None
        for k, net in enumerate(self.nets):
            if t in self.schedule and t not in self.active[k]:
                continue
            image = self.images[k, frames].repeat(repeat, 1, 1, 1)             # (rows*fb, 3, H, W)
            with attention_processors(net, self.processors[k] if self.processors else None):
                d, m = net(call.sample.to(net.dtype), call.timestep, encoder_hidden_states=call.text.to(net.dtype),
                           controlnet_cond=image.to(net.dtype), conditioning_scale=self.scales[k],
                           added_cond_kwargs=call.kwargs.get("added_cond_kwargs"), return_dict=False)
            down = list(d) if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        if down is None:
            return call
        off = sorted(b for b in self.uncontrolled if b < info.n_branches)
        if off:
            keep = mid.new_tensor([float(b not in off) for _, b in rows]).repeat_interleave(len(frames))
            keep = keep.view(-1, 1, 1, 1)                                     # (rows*fb, 1, 1, 1)
            down, mid = [r * keep for r in down], mid * keep
        down, mid = [r.to(call.sample.dtype) for r in down], mid.to(call.sample.dtype)
        before_down = call.kwargs.get("down_block_additional_residuals")   # another input's, where there is one
        before_mid = call.kwargs.get("mid_block_additional_residual")
        if before_down is not None:
            down, mid = [a + b for a, b in zip(before_down, down)], before_mid + mid
        return dataclasses.replace(call, kwargs={**call.kwargs, "down_block_additional_residuals": tuple(down),
                                                 "mid_block_additional_residual": mid})


class Control:
    """The ControlNets of one edit, loaded for ``model``, with their conditions for one clip
    (``read``: the clip's frame selection, for conditions given as files)."""

    def __init__(self, specs: Sequence[ControlSpec | Mapping | Sequence], model, read: io.ReadOptions | None = None):
        self.specs = tuple(ControlSpec.of(s) for s in specs)
        if not self.specs:
            raise VideditError("a Control needs at least one ControlSpec")
        loaded: dict[str, LoadedControlNet] = {}
        for s in self.specs:   # one copy of a ControlNet that several conditions name
            if s.controlnet not in loaded:
                loaded[s.controlnet] = load_controlnet(s.controlnet, model)
        self.nets = tuple(loaded[s.controlnet] for s in self.specs)
        self.conditions = tuple(ConditionFrames(s.condition, read) for s in self.specs)
        self.read = read

    def check_clip(self, n_frames: int) -> None:
        """One line where a condition given as a file does not have the clip's frame count."""
        for s in self.specs:
            s.condition.check_file(n_frames, self.read or io.ReadOptions())

    def window(self, start: int, frames: np.ndarray) -> ControlFrames:
        """The conditions of clip frames ``start .. start + F`` whose source frames at the working
        size are ``frames`` (F, H, W, 3) uint8."""
        images = np.stack([c.frames(start, frames) for c in self.conditions])   # (K, F, H, W, 3)
        return ControlFrames(self.nets, self.specs, images)


def resolve_control(control: Control | Sequence | None, model, read: io.ReadOptions | None = None,
                    n_frames: int | None = None) -> Control | None:
    """``control`` as given (a :class:`Control`), or loaded from specs, or None for none; with
    ``n_frames``, conditions given as files are checked against the clip's frame count first
    (before any ControlNet is loaded)."""
    if control is None:
        return None
    if not isinstance(control, Control):
        specs = [ControlSpec.of(s) for s in ([control] if isinstance(control, (ControlSpec, Mapping)) else control)]
        if not specs:
            return None
        if n_frames is not None:
            for s in specs:
                s.condition.check_file(n_frames, read or io.ReadOptions())
        return Control(specs, model, read)
    if n_frames is not None:
        control.check_clip(n_frames)
    return control
