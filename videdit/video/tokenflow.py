"""TokenFlow (Geyer et al. 2023): a few pivot frames are edited jointly with extended
attention, and every frame takes the pivots' self-attention outputs at its tokens' nearest
neighbours, found on the source's features.

``scope="clip"`` (the default) is the official algorithm, ``run_tokenflow_pnp.py`` and
``tokenflow_utils.py`` of github.com/omerbt/TokenFlow, with its defaults:

- Pivots (``batched_denoise_step``): at every step one random frame of each batch of
  ``batch_size`` (8) consecutive frames, from a generator seeded with the edit's seed, so a
  run repeats; the pivots change from step to step and from batch to batch. The official code
  cuts the clip to a multiple of 8 frames (``get_latents_path``); here a shorter last batch
  draws its pivot among its own frames.
- Pivotal pass (``register_pivotal(True)``, ``register_extended_attention_pnp``): the UNet
  first runs on the pivots alone, one batch, on the chosen self-attention layers (all, as the
  official code patches every ``BasicTransformerBlock``), each pivot's queries attending to
  the keys and values of *all the clip's pivots* (per guidance half and branch; the editor's
  source branch attends to itself). Its noise prediction is dropped (``CallInfo.pivot_frames``);
  what it leaves is each layer's attention outputs and the source's features.
- Every frame, pivots included, then runs in its batch (``make_tokenflow_attention_block``,
  ``register_batch_idx``): its attention output at each token is the pivots' output at the
  token's nearest neighbour by cosine similarity of the source branch's ``norm1`` hidden states
  of the transformer block (``batch_cosine_sim(norm_hidden_states[0], pivot_hidden_states[0])``,
  ``features="norm1"``), from the pivot of its batch and of the batch before (``batch_idxs``),
  blended with the code's weights (``blend="code"``): w = sigmoid(d2 / (d1 + d2)) for its own
  batch's pivot and 1 - w for the previous one's, d1 and d2 the frame's distances to the
  *middles* of the two batches (``p1 = batch_idx * n + n // 2``); the first batch takes its own
  pivot only. The paper's Eq. 5 instead blends the pivots just before and after the frame by
  their distance (``blend="paper"``, linear weights).
- As the official ``idx1 * 3`` gathers every row of the batch, the source branch's attention
  outputs are propagated too (its latents stay the stored inversion's; what changes is the
  features the editor injects from it). ``exact_source`` leaves the source's own attention.

Memory: the whole clip is one window (``edit_video(window=...)`` at least the clip's frames;
``configs/tokenflow.yaml`` sets it), and the pivotal pass holds, as the official code does,
each pivot's keys and values repeated per pivot: ``2 * halves * branches * P**2 * T * C``
numbers at a layer of ``T`` tokens and ``C`` channels for ``P = ceil(frames / 8)`` pivots. For
SD 1.5 at 512x512 in fp16 (T * C = 1.31M at the 64x64 layers) that is 21 MB * P**2: 0.5 GB for
40 frames, 42 GB for the 353-frame portrait clip (computed, not measured), on top of the
pivotal batch's activations (4 rows a pivot) and every layer's pivot outputs and source
features kept for the step (5 rows of 11.6M numbers a pivot: 115 MB, 5.2 GB at 45 pivots).
Where that does not fit,
``scope="window"`` is videdit's windowed variant (``configs/tokenflow-plus.yaml``): the
``keyframes`` module's keyframes (fixed, every ``every`` frames, no seams between batches),
each window's keyframes plus the window before's last one attending jointly, its outputs
carried from window to window (flat memory), the two adjacent keyframes blended linearly (the
paper's form; ``blend`` is not read), the source branch left exact (``exact_source`` is not
read). ``features="keys"`` matches on the source's keys of the layer (a linear map of the
``norm1`` states) instead. Scope window splits one clip over several workers after a keyframe
pass (:mod:`videdit.split`: ``recording`` / ``frozen``, :class:`KeyframeFreeze`); scope clip
cannot (every frame feeds every step's pivots).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Collection, Sequence

import torch
import torch.nn.functional as F

from videdit.attention import AttentionModule, choose_layers, layer_grids, patterns
from videdit.core.loop import CallInfo, StepCallback, StepContext
from videdit.editing import EDITORS
from videdit.errors import VideditError
from videdit.registry import improved
from videdit.video.cross_frame import AnchorStore, gather_anchors
from videdit.video.keyframes import Keyframes, neighbours
from videdit.video.module import TemporalContext, TemporalModule, TemporalPlan, Window, find, register_temporal

NAME = "tokenflow"
log = logging.getLogger("videdit.tokenflow")
WARN_BYTES = 8 * 2**30   # scope clip: say so where the pivotal pass's keys and values pass this
SCOPES = ("clip", "window")
FEATURES = ("norm1", "keys")
BLENDS = ("code", "paper")


@dataclass(frozen=True)
class TokenFlowConfig:
    layers: str | tuple[str, ...] = "*attn1.processor"   # self-attention layers (globs)
    batch_size: int = 8                  # one pivot per batch of this many frames (config_pnp.yaml batch_size)
    # clip: the official, all the clip's pivots jointly in one window; window: videdit's keyframes module in windows
    scope: str = improved("clip", better="window", why="flat memory for long clips, 0.69x the time; toy clips' warp "
                                                        "error 1.04x the official's (docs/video.md)")
    # norm1: the official nearest neighbours on the block's norm1 states; keys: on the layer's keys (videdit's)
    features: str = "norm1"
    blend: str = "code"                  # code: sigmoid weights over this and the previous batch's pivot; paper: Eq. 5
    exact_source: bool = False           # the source branch keeps its own attention outputs (official: propagated)
    offload: bool = False                # scope window: keep the carried keyframe's outputs in CPU memory

    def __post_init__(self):
        patterns(NAME, "layers", self.layers)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise VideditError(f"{NAME} batch_size must be a whole number of frames >= 1, got {self.batch_size!r}")
        for option, value, allowed in (("scope", self.scope, SCOPES), ("features", self.features, FEATURES),
                                       ("blend", self.blend, BLENDS)):
            if value not in allowed:
                raise VideditError(f"{NAME} {option} must be one of {list(allowed)}, got {value!r}")


def nearest_tokens(features: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """For each of ``features`` (T, C), the index of its most cosine-similar row of ``keys``
    (T', C) -> (T,) int64."""
    sim = F.normalize(features.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T   # (T, T')
    return sim.argmax(-1)


def code_weights(frame: int, batch_size: int) -> tuple[tuple[int, float], ...]:
    """The official blend of frame ``frame`` (``make_tokenflow_attention_block``): ((batch of
    its pivot, weight), ...): its own batch's pivot with w = sigmoid(d2 / (d1 + d2)) and the
    previous batch's with 1 - w, d1 and d2 its distances to the middles of the two batches;
    the first batch's frames take their own pivot only."""
    b = frame // batch_size
    if b == 0:
        return ((0, 1.0),)
    d1 = abs(frame - (b * batch_size + batch_size // 2))
    d2 = abs(frame - ((b - 1) * batch_size + batch_size // 2))
    w = 1 / (1 + math.exp(-d2 / (d1 + d2)))
    return (b, w), (b - 1, 1 - w)


def paper_weights(frame: int, pivots: Sequence[int]) -> tuple[tuple[int, float], ...]:
    """The paper's Eq. 5: the pivots just before and after ``frame`` (by index into the sorted
    ``pivots``), linear weights by temporal distance."""
    at = {p: i for i, p in enumerate(pivots)}
    return tuple((at[p], w) for p, w in neighbours(frame, pivots))


def pivotal_bytes(unet, layers: Collection[str], latent_size: tuple[int, int], pivots: int, rows: int) -> int:
    """Bytes of the pivotal pass's keys and values at its largest layer: each of ``pivots``
    pivots in ``rows`` (guidance halves x branches) attends to all pivots' tokens, ``2 * rows *
    pivots**2 * T * C`` numbers in the UNet's dtype (``T`` tokens, ``C`` channels of the layer)."""
    grids, modules = layer_grids(unet, latent_size), dict(unet.named_modules())
    widest = max(grids[n][0] * grids[n][1] * modules[n.removesuffix(".processor")].to_k.out_features
                 for n in layers if n in grids)
    return 2 * rows * pivots ** 2 * widest * unet.dtype.itemsize


def draw_pivots(gen: torch.Generator, n_frames: int, batch_size: int) -> tuple[int, ...]:
    """One random frame of each batch of ``batch_size`` consecutive frames (the last batch may
    be shorter): ``torch.randint(batch_size, ...) + torch.arange(0, n, batch_size)``."""
    return tuple(b + int(torch.randint(min(batch_size, n_frames - b), (1,), generator=gen))
                 for b in range(0, n_frames, batch_size))


class PivotDraw(StepCallback):
    """Draws the step's pivots before its model call and hands them to the loop
    (``CallInfo.pivot_frames``); ``drawn`` keeps each step's."""

    def __init__(self, info: CallInfo, n_frames: int, batch_size: int, seed: int):
        self.info, self.n_frames, self.batch_size = info, n_frames, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.drawn: dict[int, tuple[int, ...]] = {}

    def on_step_start(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        pivots = draw_pivots(self.gen, self.n_frames, self.batch_size)
        self.info.pivot_frames = self.drawn[ctx.step] = pivots
        return x


class Norm1Features:
    """Forward hooks on the transformer blocks' ``norm1``: keeps the latest output of each,
    under the name of the block's self-attention processor (what the official block matches
    tokens on)."""

    def __init__(self):
        self.latest: dict[str, torch.Tensor] = {}

    def hooks(self, layers: Collection[str]) -> dict:
        def keep(layer):
            def hook(module, args, output):
                self.latest[layer] = output       # (B, T, C): the call's rows (CallInfo.rows)
            return hook
        return {layer.removesuffix("attn1.processor") + "norm1": keep(layer) for layer in layers}


def source_features(call, k: torch.Tensor, norms: Norm1Features | None, source: int) -> torch.Tensor:
    """The source branch's conditional half's features of the batch -> (fb, T, C'): its
    ``norm1`` states, or (``norms`` None) its keys with the heads side by side."""
    if norms is None:
        return call.split(k)[-1, source].transpose(1, 2).flatten(2)   # (fb, heads, T, d) -> (fb, T, heads * d)
    return call.split(call.info.to_full(norms.latest[call.layer]))[-1, source]   # (fb, T, C): hooked in the call


class PivotalPropagation(AttentionModule):
    """The official TokenFlow attention on the named self-attention layers: in the pivotal
    pass, extended attention among all pivots (keeping their outputs and source features);
    in the other batches, every frame's outputs become the pivots' at nearest-neighbour tokens."""

    cross = False

    def __init__(self, layers: Collection[str], config: TokenFlowConfig, source: int, norms: Norm1Features | None):
        self.names, self.config, self.source, self.norms = frozenset(layers), config, source, norms
        self.pivots: dict[str, tuple[tuple[int, ...], torch.Tensor, torch.Tensor]] = {}  # layer -> frames, outs, feats
        self.matched: dict[str, torch.Tensor] = {}   # layer -> the features the last batch matched on (fb, T, C')
        self._k: torch.Tensor | None = None

    def applies(self, layer: str, cross: bool) -> bool:
        return not cross and layer in self.names

    def qkv(self, call, q, k, v):
        if call.info.inverting:
            return q, k, v
        self._k = k
        if not call.info.pivotal:
            return q, k, v
        ks, vs = call.split(k), call.split(v)                     # each (halves, nb, P, heads, T, d)
        halves, nb, n = ks.shape[:3]
        shape = (halves, nb, n, ks.shape[3], n * ks.shape[4], ks.shape[5])

        def joint(t):   # every pivot's keys side by side, for each pivot: (halves, nb, P, heads, P*T, d)
            return t.transpose(2, 3).flatten(3, 4)[:, :, None].expand(shape).clone()
        kj, vj = joint(ks), joint(vs)
        own = self.source % nb                                    # the source attends to itself (repeated)
        kj[:, own], vj[:, own] = ks[:, own].repeat(1, 1, 1, n, 1), vs[:, own].repeat(1, 1, 1, n, 1)
        return q, kj.flatten(0, 2), vj.flatten(0, 2)

    def output(self, call, out):
        if call.info.inverting:
            return out
        outs = call.split(out)                                    # (halves, nb, fb, T, C)
        feats = source_features(call, self._k, self.norms, self.source)
        self.matched[call.layer] = feats
        if call.info.pivotal:
            self.pivots[call.layer] = (tuple(call.info.frames), outs, feats.clone())   # the source's rows only
            return out
        pivots, p_out, p_feat = self.pivots[call.layer]
        nb = outs.shape[1]
        rows = [b for b in range(nb) if b != self.source % nb] if self.config.exact_source else list(range(nb))
        new = outs.clone()
        for j, g in enumerate(call.info.frames):
            prop = 0
            for i, w in self.weights(g, pivots):
                idx = nearest_tokens(feats[j], p_feat[i])         # (T,)
                prop = prop + w * p_out[:, rows, i][:, :, idx]     # (halves, rows, T, C)
            new[:, rows, j] = prop.to(new.dtype)
        return new.flatten(0, 2)

    def weights(self, frame: int, pivots: tuple[int, ...]) -> tuple[tuple[int, float], ...]:
        """(index into ``pivots``, weight) of the pivots frame ``frame`` takes its outputs from."""
        if self.config.blend == "paper":
            return paper_weights(frame, pivots)
        return code_weights(frame, self.config.batch_size)


class TokenFlowPropagation(AttentionModule):
    """Scope ``window``: on the named self-attention layers, non-keyframes' attention outputs
    become their keyframes' at nearest-neighbour tokens (every branch but ``source``)."""

    cross = False

    def __init__(self, layers: Collection[str], spans: Sequence[int], keyframes: Sequence[int], denoised: Sequence[int],
                 source: int, persistent: dict, offload: bool = False, final: bool = False,
                 norms: Norm1Features | None = None, carry: Collection[int] | None = None):
        self.names, self.denoised, self.source, self.norms = frozenset(layers), list(denoised), source, norms
        self.keys, self.keyset = list(spans), set(keyframes)   # keyframes to draw from (the carried one too); own
        # keyframes' outputs and source features; the last keyframe's (``carry``: these) kept for the next window
        carry = set(keyframes[-1:]) if carry is None else set(carry)
        self.store = AnchorStore(self.denoised, self._anchors, carry, persistent, offload, final)
        self._k: torch.Tensor | None = None

    def applies(self, layer: str, cross: bool) -> bool:
        return not cross and layer in self.names

    def qkv(self, call, q, k, v):
        if not call.info.inverting:
            self.store.begin(call)
            self._k = k
        return q, k, v

    def output(self, call, out):
        if call.info.inverting:
            return out
        features = source_features(call, self._k, self.norms, self.source)   # (fb, T, C')
        frames = [self.denoised[f] for f in call.info.frames]
        outs = call.split(out)                                     # (halves, nb, fb, T, C)
        feats = features[None, None]                               # (1, 1, fb, T, C')
        for j, g in enumerate(frames):
            self.store.put(call.layer, g, (outs[:, :, j], feats[:, :, j]))
        found = gather_anchors(self.store, call, frames, (outs, feats), self._anchors, NAME)
        self.store.done(call.layer, frames)
        others = [j for j, g in enumerate(frames) if g not in self.keyset]
        if not others:
            return out
        new = outs.clone()
        edit = [b for b in range(outs.shape[1]) if b != self.source]
        for j in others:
            if not found[j]:
                continue   # no keyframe to draw from: the frame keeps its own output
            prop = 0
            for (a, w), (out_a, feat_a) in zip(neighbours(frames[j], self.keys), found[j]):
                idx = nearest_tokens(features[j], feat_a[0, 0])     # (T,)
                prop = prop + w * out_a[:, edit][:, :, idx]                  # (halves, nb - 1, T, C)
            new[:, edit, j] = prop.to(new.dtype)
        return new.flatten(0, 2)

    def _anchors(self, g: int) -> tuple[int, ...]:
        return () if g in self.keyset else tuple(a for a, _ in neighbours(g, self.keys))


@register_temporal
class TokenFlow(TemporalModule):
    """TokenFlow: every frame takes random pivots' attention outputs at nearest-neighbour tokens of the source."""

    name = NAME
    config_class = TokenFlowConfig
    order = -1                    # reads the source branch's keys before cross-frame attention extends them
    needs_source_branch = True
    propagates_attention = True   # the keyframes module lets the frames between attend to themselves
    splits = True                 # scope window: the frames between read only the keyframes' (videdit.split)
    reference = ("Geyer et al., ICLR 2024; github.com/omerbt/TokenFlow (run_tokenflow_pnp.py, tokenflow_utils.py, "
                 "configs/config_pnp.yaml, preprocess.py)")

    def __init__(self, config: TokenFlowConfig):
        super().__init__(config)
        self.keyframes: Keyframes | None = None
        self.carried: dict = {}   # scope window: the last keyframe's outputs and source features (AnchorStore)
        self.propagation: PivotalPropagation | None = None   # scope clip: the current window's
        self.pivots: PivotDraw | None = None                   # scope clip: the current window's draws
        # a split clip (videdit.split): the first pass keeps every keyframe's outputs and features
        # (recording), the window groups read them back (frozen) instead of running the keyframes
        self.recording = False
        self.frozen: KeyframeFreeze | None = None
        self._source = 0   # the source branch of the last plan (its rows are not frozen: nothing reads them)

    def bind(self, modules) -> None:
        has_keyframes = any(isinstance(m, Keyframes) for m in modules)
        if self.config.scope == "window":
            self.keyframes = find(modules, Keyframes, f"{NAME} scope 'window'")
        elif has_keyframes:
            raise VideditError(f"{NAME} scope 'clip' draws its own pivots (a random frame of every "
                               f"{self.config.batch_size}, the official); drop the keyframes module, or set {NAME} "
                               f"scope: window to take its keyframes (configs/tokenflow-plus.yaml)")

    def split_refusal(self) -> str | None:
        if self.config.scope == "window":
            return None
        return (f"temporal module {NAME!r} scope 'clip' (the official) draws random pivots over the whole clip at "
                f"every step, so every frame feeds every step's pivotal pass; the clip runs on one worker (scope "
                f"window, configs/tokenflow-plus.yaml, splits)")

    def plan(self, window: Window, ctx: TemporalContext) -> TemporalPlan:
        if ctx.source_branch is None:
            raise VideditError(f"{NAME} matches tokens by the source branch's features, and this editor runs none; "
                               f"use an editor with a source branch ({', '.join(EDITORS.having('has_source_branch'))})"
                               f", e.g. plug_and_play, or keyframe_flow")
        layers = choose_layers(ctx.model.unet, patterns(NAME, "layers", self.config.layers), NAME, "layers",
                               cross=False)
        norms = Norm1Features() if self.config.features == "norm1" else None
        hooks = norms.hooks(layers) if norms is not None else {}
        if self.config.scope == "window":
            lay = self.keyframes.layout(window)
            self._source = ctx.source_branch
            persistent, final, carry = self.carried, window.last, None
            if self.recording:        # keep every keyframe's (until first_pass takes them), the last window's too
                final, carry = False, lay.keys
            elif self.frozen is not None:   # a window group: the keyframes' as the first pass left them
                persistent, final = self.frozen.entries(lay.spans, ctx.n_branches), True
            return TemporalPlan(modules=[TokenFlowPropagation(layers, lay.spans, lay.keys, ctx.denoised(window),
                                                              ctx.source_branch, persistent, self.config.offload,
                                                              final, norms, carry)], hooks=hooks)
        if not (window.first and window.last) or ctx.edited is not None:
            raise VideditError(f"{NAME} scope 'clip' has all the clip's pivots attend jointly and needs the whole clip "
                               f"in one window; this window holds frames {window.start}-{window.indices[-1]}: edit "
                               f"with a window of at least the clip's frames (--window), or set {NAME} scope: window "
                               f"(configs/tokenflow-plus.yaml) where it does not fit memory")
        n_pivots = -(-window.size // self.config.batch_size)
        need = pivotal_bytes(ctx.model.unet, layers, tuple(ctx.inversion.noise.shape[-2:]), n_pivots,
                             2 * ctx.n_branches)
        if need > WARN_BYTES:
            log.warning("%s: %d pivots attend jointly; the pivotal pass holds %.1f GB of keys and values at its "
                        "largest layer (growing with the square of the clip's length); scope window "
                        "(configs/tokenflow-plus.yaml) edits in windows at flat memory", NAME, n_pivots, need / 1e9)
        self.propagation = PivotalPropagation(layers, self.config, ctx.source_branch, norms)
        self.pivots = PivotDraw(ctx.info, window.size, self.config.batch_size, ctx.seed)
        return TemporalPlan(modules=[self.propagation], callbacks=[self.pivots], hooks=hooks)

    def take_recorded(self, keyframes: Sequence[int]) -> dict[int, dict]:
        """(First pass of a split clip, ``recording``) the attention outputs of every branch but the
        source, and the source features, of ``keyframes`` (clip indices) at every (layer, step,
        call), moved to CPU memory: {frame: {(layer, step, call): (outputs (halves, nb - 1, T, C),
        features (T, C'))}}."""
        taken: dict[int, dict] = {}
        for key, (outs, feats) in self.carried.items():
            if key[-1] in keyframes:
                edit = [b for b in range(outs.shape[1]) if b != self._source]
                taken.setdefault(key[-1], {})[key[:-1]] = (outs[:, edit].to("cpu", copy=True),
                                                           feats[0, 0].to("cpu", copy=True))
        return taken


@dataclass
class KeyframeFreeze:
    """What the frames between keyframes read of the keyframes, frozen after a split clip's first
    pass (:mod:`videdit.split`): each keyframe's attention outputs (every branch but the source,
    each guidance half) and source features at every propagated layer, step and model call, and
    its clean latents; and each window's keyframes. Sizes: :func:`freeze_bytes`."""

    layouts: dict                 # window start -> keyframes.Layout
    # keyframe -> {(layer, step, call): (outputs (halves, nb - 1, T, C), features (T, C'))}
    outputs: dict
    latents: dict                 # keyframe -> (C, h, w) its edited clean latents (float32, CPU)
    source_branch: int

    def entries(self, frames: Sequence[int], n_branches: int) -> dict:
        """``frames`` ' tensors as the :class:`AnchorStore` of a one-worker run holds them,
        {(layer, step, call, frame): (outputs (halves, nb, T, C), features (1, 1, T, C'))}: the
        source rows zero (propagation reads only the others)."""
        out = {}
        for g in frames:
            for key, (outs, feats) in self.outputs[g].items():
                full = outs.new_zeros(outs.shape[0], n_branches, *outs.shape[2:])
                full[:, [b for b in range(n_branches) if b != self.source_branch % n_branches]] = outs
                out[(*key, g)] = (full, feats[None, None])
        return out

    @property
    def keyframes(self) -> list[int]:
        return sorted(self.outputs)

    @property
    def nbytes(self) -> int:
        """Bytes of the frozen outputs and features (the latents are a few kB a keyframe)."""
        return sum(t.numel() * t.element_size() for per in self.outputs.values() for pair in per.values()
                   for t in pair)

    def keyframe_bytes(self, frame: int) -> int:
        return sum(t.numel() * t.element_size() for pair in self.outputs[frame].values() for t in pair)


def freeze_bytes(unet, layers: Collection[str], latent_size: tuple[int, int], calls: int, halves: int,
                 edit_branches: int, features: str = "keys") -> int:
    """Bytes a :class:`KeyframeFreeze` keeps per keyframe, from the layer sizes: at each layer of
    ``T`` tokens and ``C`` channels, ``calls`` model calls (steps x calls per step) of
    ``halves * edit_branches`` output rows (the heads' outputs side by side: ``C``) and one
    feature row (keys: ``C``; norm1: the block's width, also ``C`` in SD's blocks), ``T * C``
    numbers each in the UNet's dtype."""
    grids, modules = layer_grids(unet, latent_size), dict(unet.named_modules())
    total = 0
    for name in layers:
        attn = modules[name.removesuffix(".processor")]
        tokens = grids[name][0] * grids[name][1]
        width = attn.to_k.out_features if features == "keys" else attn.to_k.in_features
        total += tokens * (halves * edit_branches * attn.to_k.out_features + width)
    return calls * total * unet.dtype.itemsize
