"""Cross-frame attention: a frame's self-attention takes its keys and values from other frames
of the clip (its *anchors*), so that the frames share one appearance.

Anchors of clip frame i, by ``mode``:

- ``first``: frame 0 (Text2Video-Zero, Khachatryan et al. 2023, Sec. 3.3).
- ``sparse_causal``: frames 0 and i - 1, keys and values concatenated (Tune-A-Video, Wu et al.
  2023, for its tuned checkpoints). Frame 0 attends to [0, 0], as the references index it
  (duplicated keys with their values change nothing).
- ``mid``: the window's middle frame, ``start + (size - 1) // 2``, alone (FateZero, Qi et al.
  2023, zero-shot: ``SparseCausalAttention_index: ['mid']`` in 18 of the 19 zero-shot configs of
  github.com/ChenyangQiQi/FateZero, ``video_diffusion/models/attention.py``, where the clip is
  the frames edited together: here each window is one such clip, and nothing is carried).

``min_channels`` keeps layers narrower than that on their own frame, as FateZero's
``least_sc_channel`` (640 in 15 of those 18 configs, 1280 in 3; at 640 SD's 640- and
1280-channel layers, the 32x32 and smaller grids at 512 px, take the anchor, and the 320-channel
64x64 ones attend within the frame).

Attention to keyframes (TokenFlow's extended attention) is the ``keyframes`` module, which
uses the same :class:`CrossFrameAttention` and :class:`AnchorStore`.

Where the edit runs ControlNets, their self-attention layers (matching ``layers``) take the
same anchors (``controlnet``, on by default), as Text2Video-Zero's model.py installs its
``CrossFrameAttnProcessor`` on the ControlNet too; their anchors are kept apart from the UNet's
(the layer names carry a ``controlnet{k}.`` prefix) and cost about as much again per layer.

It acts per branch and per guidance half: frames of branch b in half h attend to the anchors'
keys and values in branch b and half h, as the modules before it on the layer (an editor's
injections) left them. The editor's source branch is left alone: it replays the source
trajectory, which the inversion computed without cross-frame attention, so changing its
attention would undo an exact inversion's replay (and the source features editors inject).

No seams. Frames go through the UNet in batches and the clip in windows, so an anchor may sit
in an earlier batch of the step or in an earlier window. :class:`AnchorStore` keeps each
anchor's keys and values at every (layer, step, model call of the step) from the call that
computed them: while frames of the window still need them, and, for the few frames later
windows need (frame 0; the window's last frame for ``sparse_causal``; its last keyframe for
``keyframes``), in the module's state across windows. Anchors that come later in a window
(keyframes) are run first (the loop's ``lead_frames``). So the edit does not depend on
``batch_size``, and in modes ``first`` and ``sparse_causal`` not on the windows either (for
inversions that treat frames independently; not DDPM inversion with ``noise="frame"``, which
draws its noise per window).

Memory: a frame kept across windows (one for ``first`` and ``keyframes``, two for
``sparse_causal``) costs its keys and values at every selected layer and step,
``2 * halves * branches * steps * sum over layers (tokens * channels)`` numbers, counting the
branches that take anchors (an editor's source branch attends to itself and is not kept).
For SD 1.5 at 512x512 (11.6M tokens x channels over its 16 self-attention layers) with
guidance that is 92 MB a step in fp16, 4.6 GB over 50 steps; tiny-random at 64x64 needs
152 kB a step. The clip's last window keeps none (``Window.last``), so a
clip that fits in one window pays nothing for them. ``offload`` keeps them in CPU memory;
fewer ``layers`` cost proportionally less. Anchors within the window are held for the
current step only, while frames still need them (``sparse_causal``: the previous batch's
last frame; ``keyframes``: the keyframes, until the window's last batch).
"""

from __future__ import annotations

import logging
import math
from fnmatch import fnmatchcase
from dataclasses import dataclass
from typing import Callable, Collection, Iterable, Sequence

import torch

from videdit.attention import AttentionModule, AttnCall, choose_layers, patterns
from videdit.errors import VideditError
from videdit.video.module import TemporalContext, TemporalModule, TemporalPlan, Window, register_temporal

log = logging.getLogger("videdit")
NAME = "cross_frame"
MODES = ("first", "sparse_causal", "mid")

# clip frame index -> the clip frames it attends to
Anchors = Callable[[int], tuple[int, ...]]


@dataclass(frozen=True)
class CrossFrameConfig:
    mode: str = "first"                     # first | sparse_causal | mid
    layers: str | tuple[str, ...] = "*attn1.processor"   # glob(s) over self-attention processor names
    offload: bool = False                   # keep the anchors later windows need in CPU memory
    controlnet: bool = True                 # a ControlNet's self-attention too (Text2Video-Zero's model.py)
    min_channels: int = 0                   # only layers of at least this many channels (FateZero's least_sc_channel)

    def __post_init__(self):
        if self.mode == "keyframes":
            raise VideditError(f"{NAME} mode 'keyframes' is the keyframes module: use --temporal keyframes:every=N")
        if self.mode not in MODES:
            raise VideditError(f"{NAME} mode must be one of {list(MODES)}, got {self.mode!r}")
        patterns(NAME, "layers", self.layers)
        if not isinstance(self.controlnet, bool):
            raise VideditError(f"{NAME} controlnet must be true or false, got {self.controlnet!r}")
        if isinstance(self.min_channels, bool) or not isinstance(self.min_channels, int) or self.min_channels < 0:
            raise VideditError(f"{NAME} min_channels must be an int >= 0 (FateZero: 640), got {self.min_channels!r}")


def layer_channels(unet, layers: Iterable[str]) -> dict[str, int]:
    """{processor name: channels of the hidden states it attends over} (the transformer
    block's width, FateZero's ``dim`` in ``SpatioTemporalTransformerBlock``)."""
    modules = dict(unet.named_modules())
    return {n: modules[n.removesuffix(".processor")].to_q.in_features for n in layers}


def anchored_layers(unet, globs: Sequence[str], min_channels: int) -> list[str]:
    """The self-attention layers matching ``globs`` with at least ``min_channels`` channels,
    possibly none: FateZero's ``least_sc_channel`` then leaves every layer within its frame."""
    layers = choose_layers(unet, globs, NAME, "layers", cross=False)
    channels = layer_channels(unet, layers)
    wide = [n for n in layers if channels[n] >= min_channels]
    if not wide:
        log.info("%s: no self-attention layer has min_channels=%d or more (this model's have %s): every frame "
                 "attends within itself", NAME, min_channels, sorted(set(channels.values())))
    return wide


def middle_frame(window: Window) -> int:
    """FateZero's ``'mid'`` anchor of a clip (window): ``int(clip_length - 1) // 2``."""
    return window.start + (window.size - 1) // 2


class AnchorStore:
    """Per-frame tensors of anchor frames, at (layer, step, model call within the step).

    ``window`` holds the clip indices of the frames being denoised, ``anchors`` maps each to
    the frames it attends to, ``carry`` names the window's frames later windows attend to:
    those are kept in ``persistent`` (a dict the temporal module keeps from window to window)
    for every step; other frames only while a frame of the window that has not run yet at this
    (layer, step, call) needs them. Entries of ``persistent`` no frame of this window needs are
    dropped on creation, so it holds only what the next windows read; in the clip's ``final``
    window nothing is carried."""

    def __init__(self, window: Collection[int], anchors: Anchors, carry: Collection[int], persistent: dict,
                 offload: bool = False, final: bool = False):
        self.window, self.anchors = window, anchors
        self.needed_by: dict[int, set[int]] = {}
        for g in window:
            for a in anchors(g):
                self.needed_by.setdefault(a, set()).add(g)
        self.carry = set() if final else set(carry)   # the clip's last window: no later one reads them
        self.persistent, self.offload = persistent, offload
        earlier = {a for a in self.needed_by if a not in window}
        for key in [k for k in persistent if k[-1] not in earlier]:
            del persistent[key]
        self._call: dict[str, tuple[int, int]] = {}        # layer -> (step, call within the step)
        self._done: dict[str, set[int]] = {}                # layer -> frames run in this call
        self._transient: dict[str, dict[int, tuple]] = {}   # layer -> {frame: tensors}

    def begin(self, call: AttnCall) -> None:
        """Mark a UNet call reaching ``call.layer``: the first batch of a model call starts a
        new (step, call) key there (a sampler or editor may call the model twice a step)."""
        step, last = call.info.step, self._call.get(call.layer)
        same_step = last is not None and last[0] == step
        if call.info.batch == 0 or not same_step:
            self._call[call.layer] = (step, last[1] + 1 if same_step else 0)
            self._done[call.layer], self._transient[call.layer] = set(), {}

    def _key(self, layer: str, frame: int) -> tuple:
        return (layer, *self._call[layer], frame)

    def put(self, layer: str, frame: int, tensors: tuple[torch.Tensor, ...]) -> None:
        """Keep ``frame`` 's tensors if a frame yet to run, or a later window, needs them."""
        if frame in self.carry:
            self.persistent[self._key(layer, frame)] = tuple(
                t.to("cpu", copy=True) if self.offload else t.clone() for t in tensors)
        elif self.needed_by.get(frame, set()) - self._done[layer]:
            self._transient[layer][frame] = tuple(t.clone() for t in tensors)

    def get(self, layer: str, frame: int, like: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        found = self._transient[layer].get(frame)
        if found is None:
            found = self.persistent.get(self._key(layer, frame))
        return None if found is None else tuple(t.to(like.device) for t in found)

    def done(self, layer: str, frames: Iterable[int]) -> None:
        """``frames`` have run at this (layer, step, call): drop what no later frame needs."""
        done = self._done[layer]
        done.update(frames)
        keep = self._transient[layer]
        for f in [f for f in keep if not self.needed_by.get(f, set()) - done]:
            del keep[f]


def gather_anchors(store: AnchorStore, call: AttnCall, clip_frames: list[int], tensors: tuple[torch.Tensor, ...],
                   anchors: Anchors, what: str) -> list[list[tuple[torch.Tensor, ...]]]:
    """For each frame of the batch, its anchors' tensors (each (halves, nb, ...)) from the
    batch ``tensors`` (each (halves, nb, fb, ...)) or the store; an anchor not run yet is an
    error naming the ordering problem."""
    in_batch = {g: j for j, g in enumerate(clip_frames)}
    out = []
    for g in clip_frames:
        got = []
        for a in anchors(g):
            if a in in_batch:
                got.append(tuple(t[:, :, in_batch[a]] for t in tensors))
                continue
            found = store.get(call.layer, a, tensors[0])
            if found is None:
                raise VideditError(
                    f"{what}: frame {g} attends to frame {a}, which has not run at {call.layer}, step "
                    f"{call.info.step}: edit the clip's windows in order with one TemporalStack (frame {a} ran in an "
                    f"earlier one), and use one temporal module that orders frames (lead frames) per edit")
            if found[0].shape[:2] != tensors[0].shape[:2]:
                raise VideditError(f"{what}: frame {a} was stored with {tuple(found[0].shape[:2])} (halves, branches)"
                                   f" but this call has {tuple(tensors[0].shape[:2])}")
            got.append(found)
        out.append(got)
    return out


def concat_anchors(per_frame: list[list[tuple[torch.Tensor, ...]]], index: int) -> torch.Tensor:
    """Tensor ``index`` of each frame's anchors concatenated over tokens -> (halves, nb, fb,
    heads, m*T, d). Frames with fewer anchors repeat theirs to the common count (keys repeated
    with their values leave attention unchanged)."""
    m = math.lcm(*(len(a) for a in per_frame))
    rows = [torch.cat([t[index] for t in anchors] * (m // len(anchors)), dim=-2) for anchors in per_frame]
    return torch.stack(rows, dim=2)


class CrossFrameAttention(AttentionModule):
    """On the named self-attention layers, each frame's keys and values become its anchors'
    (``anchors``: clip frame -> clip frames; ``clip_frames``: the clip frame of each of the
    denoised frames, the window's ``range`` or the subset a module edits)."""

    cross = False
    any_tokens = True   # keys and values swapped whole: a frame's merged tokens take its anchor's merged ones

    def __init__(self, layers: Collection[str], anchors: Anchors, clip_frames: Sequence[int], store: AnchorStore,
                 what: str = NAME, source_branch: int | None = None, inverting: bool = False):
        self.names, self.anchors, self.clip_frames = frozenset(layers), anchors, clip_frames
        self.store, self.what = store, what
        self.source_branch = source_branch   # left attending to itself
        self.inverting = inverting           # acts in the inversion's UNet calls instead of the edit's

    def applies(self, layer: str, cross: bool) -> bool:
        return not cross and layer in self.names

    def qkv(self, call, q, k, v):
        if call.info.inverting != self.inverting:
            return q, k, v
        self.store.begin(call)
        frames = [self.clip_frames[f] for f in call.info.frames]
        ks, vs = call.split(k), call.split(v)                     # each (halves, nb, fb, heads, T, d)
        nb = ks.shape[1]
        own = None if self.source_branch is None else self.source_branch % nb
        attend = [b for b in range(nb) if b != own]               # the branches that take anchors
        ka, va = (ks, vs) if own is None else (ks[:, attend], vs[:, attend])   # only theirs are stored: a
        for j, g in enumerate(frames):                            # two-branch editor's source would double it
            self.store.put(call.layer, g, (ka[:, :, j], va[:, :, j]))
        per_frame = gather_anchors(self.store, call, frames, (ka, va), self.anchors, self.what)
        self.store.done(call.layer, frames)
        k_a, v_a = concat_anchors(per_frame, 0), concat_anchors(per_frame, 1)   # each (halves, nb', fb, heads, m*T, d)
        if own is None:
            k, v = k_a, v_a
        else:
            m = k_a.shape[-2] // ks.shape[-2]
            k, v = ks.new_empty(*ks.shape[:-2], *k_a.shape[-2:]), vs.new_empty(*vs.shape[:-2], *v_a.shape[-2:])
            k[:, attend], v[:, attend] = k_a, v_a
            k[:, own], v[:, own] = ks[:, own].repeat_interleave(m, dim=-2), vs[:, own].repeat_interleave(m, dim=-2)
        return q, k.flatten(0, 2), v.flatten(0, 2)                 # k, v (B, heads, m*T, d)


class ControlNetCrossFrame(CrossFrameAttention):
    """:class:`CrossFrameAttention` on the ControlNets' self-attention layers whose processor names
    (after their ``controlnet{k}.`` prefix) match ``patterns``: Text2Video-Zero's model.py gives the
    ControlNet the UNet's ``CrossFrameAttnProcessor`` (``controlnet.set_attn_processor``)."""

    def __init__(self, patterns: Sequence[str], anchors: Anchors, clip_frames: Sequence[int], store: AnchorStore,
                 source_branch: int | None = None):
        super().__init__((), anchors, clip_frames, store, source_branch=source_branch)
        self.patterns = tuple(patterns)

    def applies(self, layer: str, cross: bool) -> bool:
        prefix, _, name = layer.partition(".")
        return not cross and prefix.startswith("controlnet") and any(fnmatchcase(name, p) for p in self.patterns)


@register_temporal
class CrossFrame(TemporalModule):
    """Cross-frame attention: keys/values of the first frame (Text2Video-Zero), first + previous (sparse-causal),
    or the window's middle frame (FateZero)."""

    name = NAME
    config_class = CrossFrameConfig

    def __init__(self, config: CrossFrameConfig):
        super().__init__(config)
        self.anchors: dict = {}   # keys and values of the frames later windows attend to (AnchorStore)
        self.controlnet_anchors: dict = {}   # the same on the ControlNets' layers

    def plan(self, window: Window, ctx: TemporalContext) -> TemporalPlan:
        layers = anchored_layers(ctx.model.unet, patterns(NAME, "layers", self.config.layers), self.config.min_channels)
        denoised = ctx.denoised(window)
        lead = ()
        if self.config.mode == "first":
            anchors, carry = (lambda g: (0,)), {0}
        elif self.config.mode == "sparse_causal":
            anchors, carry = (lambda g: (0, max(g - 1, 0))), {0, window.indices[-1]}
        else:
            mid = middle_frame(window)
            if mid not in denoised:
                raise VideditError(f"{NAME} mode 'mid': the window's middle frame {mid} is not among the frames "
                                   f"edited; edit every frame with mode 'mid'")
            anchors, carry, lead = (lambda g: (mid,)), set(), (denoised.index(mid),)
        store = AnchorStore(denoised, anchors, carry, self.anchors, self.config.offload, window.last)
        controlnet = []
        if self.config.controlnet:   # acts only where the edit runs a ControlNet
            cn_store = AnchorStore(denoised, anchors, carry, self.controlnet_anchors, self.config.offload, window.last)
            controlnet = [ControlNetCrossFrame(patterns(NAME, "layers", self.config.layers), anchors, denoised,
                                               cn_store, source_branch=ctx.source_branch)]
        return TemporalPlan(modules=[CrossFrameAttention(layers, anchors, denoised, store,
                                                         source_branch=ctx.source_branch)],
                            controlnet_modules=controlnet, lead_frames=lead)


def fixed_anchors(layers: Collection[str], anchors: torch.Tensor, inverting: bool = False,
                  what: str = NAME) -> tuple[CrossFrameAttention, tuple[int, ...]]:
    """Frame g of F attends to the frames ``anchors[g]`` ((F, m) frame indices; (F,): one each)
    on ``layers``, within one window (FateZero's ``SparseCausalAttention`` as its inversion and
    edit run it), in the inversion's UNet calls or the edit's -> the module and the frames that
    must run first (``CallInfo.lead_frames``: those some earlier frame attends to)."""
    rows = [tuple(int(a) for a in row) for row in anchors.view(len(anchors), -1)]
    lead = tuple(sorted({a for g, row in enumerate(rows) for a in row if a > g}))
    store = AnchorStore(range(len(rows)), lambda g: rows[g], (), {}, final=True)
    return CrossFrameAttention(layers, lambda g: rows[g], range(len(rows)), store, what=what,
                               inverting=inverting), lead
