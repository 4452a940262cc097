"""TokenFlow propagation (Geyer et al. 2023, Sec. 4.2): the frames between keyframes take the
keyframes' self-attention outputs at their tokens' nearest neighbours.

During denoising, on the chosen self-attention layers, a frame's attention output becomes the
keyframes' outputs at its tokens' nearest neighbours among theirs, the two nearest keyframes
(before and after, from the ``keyframes`` module) blended linearly by temporal distance.
Neighbours are found by cosine similarity of the *source* branch's features at the same layer
and step: the keys of its conditional half (a linear map of the block's normalised hidden
states). The source branch itself is left alone, so the correspondences stay the source's;
this needs an editor that replays the source beside the edit (``has_source_branch`` in
``videdit methods``). The frames between attend to themselves (the ``keyframes`` module reads
``propagates_attention``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Sequence

import torch
import torch.nn.functional as F

from videdit.attention import AttentionModule, choose_layers, patterns
from videdit.editing import EDITORS
from videdit.errors import VideditError
from videdit.video.cross_frame import AnchorStore, gather_anchors
from videdit.video.keyframes import Keyframes, neighbours
from videdit.video.module import TemporalContext, TemporalModule, TemporalPlan, Window, find, register_temporal

NAME = "tokenflow"


@dataclass(frozen=True)
class TokenFlowConfig:
    layers: str | tuple[str, ...] = "*attn1.processor"   # self-attention layers (globs)
    offload: bool = False                # keep the carried keyframe's outputs in CPU memory

    def __post_init__(self):
        patterns(NAME, "layers", self.layers)


def nearest_tokens(features: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """For each of ``features`` (T, C), the index of its most cosine-similar row of ``keys``
    (T', C) -> (T,) int64."""
    sim = F.normalize(features.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T   # (T, T')
    return sim.argmax(-1)


class TokenFlowPropagation(AttentionModule):
    """On the named self-attention layers, non-keyframes' attention outputs become their
    keyframes' at nearest-neighbour tokens (every branch but ``source``)."""

    cross = False

    def __init__(self, layers: Collection[str], spans: Sequence[int], keyframes: Sequence[int], window: range,
                 source: int, persistent: dict, offload: bool = False, final: bool = False):
        self.names, self.offset, self.source = frozenset(layers), window.start, source
        self.keys, self.keyset = list(spans), set(keyframes)   # keyframes to draw from (the carried one too); own
        # keyframes' outputs and source features; the last keyframe's kept for the next window
        self.store = AnchorStore(window, self._anchors, set(keyframes[-1:]), persistent, offload, final)
        self._features: torch.Tensor | None = None

    def applies(self, layer: str, cross: bool) -> bool:
        return not cross and layer in self.names

    def qkv(self, call, q, k, v):
        if not call.info.inverting:
            self.store.begin(call)
            ks = call.split(k)[-1, self.source]                      # (fb, heads, T, d): source, conditional half
            self._features = ks.transpose(1, 2).flatten(2)         # (fb, T, heads * d)
        return q, k, v

    def output(self, call, out):
        if call.info.inverting:
            return out
        frames = [self.offset + f for f in call.info.frames]
        outs = call.split(out)                                     # (halves, nb, fb, T, C)
        feats = self._features[None, None]                         # (1, 1, fb, T, C')
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
                idx = nearest_tokens(self._features[j], feat_a[0, 0])     # (T,)
                prop = prop + w * out_a[:, edit][:, :, idx]                  # (halves, nb - 1, T, C)
            new[:, edit, j] = prop.to(new.dtype)
        return new.flatten(0, 2)

    def _anchors(self, g: int) -> tuple[int, ...]:
        return () if g in self.keyset else tuple(a for a, _ in neighbours(g, self.keys))


@register_temporal
class TokenFlow(TemporalModule):
    """TokenFlow: the frames between keyframes take the keyframes' attention outputs at nearest-neighbour tokens."""

    name = NAME
    config_class = TokenFlowConfig
    order = -1                    # reads the source branch's keys before cross-frame attention extends them
    needs_source_branch = True
    propagates_attention = True   # the keyframes module lets the frames between attend to themselves

    def __init__(self, config: TokenFlowConfig):
        super().__init__(config)
        self.keyframes: Keyframes | None = None
        self.carried: dict = {}   # the last keyframe's outputs and source features (AnchorStore)

    def bind(self, modules) -> None:
        self.keyframes = find(modules, Keyframes, NAME)

    def plan(self, window: Window, ctx: TemporalContext) -> TemporalPlan:
        if ctx.source_branch is None:
            raise VideditError(f"{NAME} matches tokens by the source branch's features, and this editor runs none; "
                               f"use an editor with a source branch ({', '.join(EDITORS.having('has_source_branch'))})"
                               f", e.g. prompt_to_prompt, or keyframe_flow")
        lay = self.keyframes.layout(window)
        layers = choose_layers(ctx.model.unet, patterns(NAME, "layers", self.config.layers), NAME, "layers",
                               cross=False)
        return TemporalPlan(modules=[TokenFlowPropagation(layers, lay.spans, lay.keys, window.indices,
                                                          ctx.source_branch, self.carried, self.config.offload,
                                                          window.last)])
