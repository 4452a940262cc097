"""Token merging in the UNet's transformer blocks: ToMe for Stable Diffusion (Bolya & Hoffman 2023),
as github.com/dbolya/tomesd does it, installed for a ``with`` block and always removed.

In each transformer block whose token grid is downsampled at most ``max_downsample`` times from the
latent grid (tomesd's default 1: SD 1.5's 64x64 layers at 512 px, 5 of its 16 blocks), the block's input
``x`` (B, N, C) picks which tokens merge (``tomesd/patch.py`` compute_merge): N tokens are split into
a destination set, one token per ``sy`` x ``sx`` cell of the grid (at random in the cell, drawn once
per block call for the whole batch; the top-left token without ``use_rand``, or when the batch is
odd, as tomesd forces), and the source set, the rest; every source token is matched to its most
cosine-similar destination token, and the ``r = int(N * ratio)`` best-matched source tokens are
averaged into their destinations (``tomesd/merge.py`` bipartite_soft_matching_random2d). The
self-attention then runs on the N - r tokens left and its output is copied back to all N positions
(unmerge: a merged token's output goes to every token merged into it). ``merge_crossattn`` and
``merge_mlp`` do the same around the cross-attention and the feed-forward, off by default as in
tomesd. The draws come from one generator seeded by ``seed`` (tomesd forks the global RNG: seeded
here so runs repeat).

Installed without patching classes: the block's input is read by a forward pre-hook on the block,
the self-attention's processor is wrapped (:class:`MergedAttention`), so whatever processor the edit
installed (an editor's, cross-frame attention's) runs on the merged tokens, and the merge is
undone after it. Cross-frame attention composes as it does in Text2Video-Zero with tomesd (its
model.py patches the pipeline whose ``CrossFrameAttnProcessor`` then sees merged tokens): each frame
is merged on its own and every frame keeps N - r tokens, so a frame takes its anchor's keys and values
as the anchor's own merged tokens gave them; nothing is merged across frames. Modules that read
tokens by position (self-attention maps swapped between branches, features propagated by spatial
correspondence) cannot run on a merged layer: :func:`token_merging` refuses them by name unless
they declare ``AttentionModule.any_tokens``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch

from videdit.attention.layers import layer_grids
from videdit.attention.processor import ComposedProcessor
from videdit.errors import VideditError

Merge = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TokenMerging:
    """tomesd's ``apply_patch`` options, with its defaults."""

    ratio: float = 0.5            # fraction of a merged layer's tokens removed (0: none, the output unchanged)
    max_downsample: int = 1       # merge in blocks whose grid is the latent's downsampled at most this much
    sx: int = 2                   # destination cells: one destination token per sy x sx tokens
    sy: int = 2
    use_rand: bool = True         # the destination at random in its cell (else its top-left token)
    seed: int | None = None       # the destination draws' generator (None: the edit's seed)
    merge_attn: bool = True       # around the self-attention
    merge_crossattn: bool = False  # around the cross-attention (tomesd: "not recommended")
    merge_mlp: bool = False       # around the feed-forward (tomesd: "very not recommended")

    def __post_init__(self):
        for name in ("sx", "sy"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise VideditError(f"token merging {name} must be a whole number >= 1, got {getattr(self, name)!r}")
        top = 1 - 1 / (self.sx * self.sy)
        if not 0 <= self.ratio <= top:
            raise VideditError(f"token merging ratio must be in [0, {top:g}] (1 - 1/(sx*sy): only the tokens that "
                               f"are not a cell's destination can merge), got {self.ratio!r}")
        if self.max_downsample not in (1, 2, 4, 8):
            raise VideditError(f"token merging max_downsample must be 1, 2, 4 or 8, got {self.max_downsample!r}")


def token_merging_options(value: Mapping[str, Any] | float | None) -> dict | None:
    """``--tome RATIO`` or a config's ``tome:`` (a ratio, or a mapping of :class:`TokenMerging` options)
    -> the options; None stays None (off)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"ratio": float(value)}
    raise VideditError(f"tome must be a ratio (e.g. 0.5) or a mapping of token merging options, got {value!r}")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def bipartite_soft_matching_2d(metric: torch.Tensor, h: int, w: int, sx: int, sy: int, r: int,
                               generator: torch.Generator | None = None) -> tuple[Merge, Merge]:
    """(merge, unmerge) for tokens ``metric`` (B, N, C) on an h x w grid (row-major): one destination
    token per sy x sx cell (at random in the cell from ``generator``, the same cell positions for the
    whole batch; the top-left one without a generator; tokens beyond the last whole cell are
    sources), the ``r`` source tokens most cosine-similar to their best destination merged into it
    by their mean. merge: (B, N, c) -> (B, N - r, c), unmerge: back, each merged token's value at
    every position merged into it. tomesd's ``bipartite_soft_matching_random2d``."""
    B, N, _ = metric.shape
    if r <= 0:
        return _identity, _identity
    hc, wc = h // sy, w // sx                                     # whole cells
    with torch.no_grad():
        if generator is None:
            pick = torch.zeros(hc, wc, dtype=torch.int64)
        else:
            pick = torch.randint(sy * sx, (hc, wc), generator=generator, device=generator.device).cpu()
        is_dst = torch.zeros(h, w, dtype=torch.bool)
        cy = torch.arange(hc)[:, None] * sy + pick // sx          # (hc, wc): the destination's row
        cx = torch.arange(wc)[None, :] * sx + pick % sx           # and column
        is_dst[cy, cx] = True
        order = torch.argsort((~is_dst).flatten().to(torch.int8), stable=True).to(metric.device)  # dst | src
        n_dst = hc * wc
        dst_pos, src_pos = order[:n_dst], order[n_dst:]           # token indices of each set
        r = min(r, len(src_pos))
        m = metric / metric.norm(dim=-1, keepdim=True)
        scores = m[:, src_pos] @ m[:, dst_pos].transpose(-1, -2)  # (B, N - n_dst, n_dst)
        best, best_dst = scores.max(dim=-1)                       # each source's best destination
        rank = best.argsort(dim=-1, descending=True)              # (B, N - n_dst)
        merged, kept = rank[:, :r], rank[:, r:]                   # indices into the sources
        into = best_dst.gather(1, merged)                         # (B, r): their destinations

    def merge(x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        src, dst = x[:, src_pos], x[:, dst_pos]                   # (B, N - n_dst, c), (B, n_dst, c)
        unm = src.gather(1, kept[..., None].expand(-1, -1, c))
        moving = src.gather(1, merged[..., None].expand(-1, -1, c))
        dst = dst.scatter_reduce(1, into[..., None].expand(-1, -1, c), moving, reduce="mean")
        return torch.cat([unm, dst], dim=1)                       # (B, N - r, c)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        unm, dst = x[:, :N - n_dst - r], x[:, N - n_dst - r:]     # (B, N - n_dst - r, c), (B, n_dst, c)
        moved = dst.gather(1, into[..., None].expand(-1, -1, c))  # a merged source takes its destination's value
        out = x.new_zeros(x.shape[0], N, c)
        out[:, dst_pos] = dst
        src = src_pos[None].expand(x.shape[0], -1)                # (B, N - n_dst): the sources' token indices
        out.scatter_(1, src.gather(1, kept)[..., None].expand(-1, -1, c), unm)
        out.scatter_(1, src.gather(1, merged)[..., None].expand(-1, -1, c), moved)
        return out

    return merge, unmerge


class _Block:
    """One transformer block's merge for the call in flight, set by its pre-hook."""

    def __init__(self):
        self.merge: Merge = _identity
        self.unmerge: Merge = _identity
        self.tokens = (0, 0)   # (N, N - r): the self-attention's tokens before and after merging, last call


class MergedAttention:
    """A processor run on the block's merged tokens: merge the hidden states, run ``inner``, unmerge."""

    def __init__(self, inner, block: _Block):
        self.inner, self.block = inner, block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        merged = self.block.merge(hidden_states)                  # (B, N - r, C)
        self.block.tokens = (hidden_states.shape[1], merged.shape[1])
        out = self.inner(attn, merged, encoder_hidden_states, attention_mask, temb, **kwargs)
        return self.block.unmerge(out)


def _block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _refuse(layer: str, proc, latent_size: tuple[int, int] | None, merged: Callable[[str], bool]) -> None:
    """Refuse modules that read tokens by position on a layer that merges."""
    if not isinstance(proc, ComposedProcessor) or not merged(layer):
        return
    bad = sorted({type(m).__name__ for m in proc.modules if not getattr(m, "any_tokens", False)})
    if bad:
        where = f" at latents of {latent_size[0]}x{latent_size[1]}" if latent_size else ""
        raise VideditError(f"token merging cannot run with {', '.join(bad)} on {layer}{where}: it reads attention "
                           f"by token position and merging leaves fewer tokens, out of place; leave --tome out, or "
                           f"keep that module off the merged layers (the full latent grid's at max_downsample 1)")


@contextmanager
def token_merging(unet, config: TokenMerging | None, *, seed: int = 0,
                  latent_size: tuple[int, int] | None = None) -> Iterator[dict[str, _Block]]:
    """Merge tokens in ``unet``'s transformer blocks (:class:`TokenMerging`) for the ``with`` block;
    yields {block name: its state}. Wraps the processors installed now (install the edit's first),
    refuses (by name) modules on them that read tokens by position, on the layers that merge at
    ``latent_size`` (None: every layer that could); restores processors and removes hooks in ``finally``.
    ``config`` None: nothing is installed."""
    if config is None:
        yield {}
        return
    generator = torch.Generator().manual_seed(seed if config.seed is None else config.seed)
    size: list[tuple[int, int]] = [(0, 0)]
    modules = dict(unet.named_modules())
    originals = dict(unet.attn_processors)
    blocks = {name[:-len(".attn1.processor")]: _Block() for name in originals if name.endswith(".attn1.processor")}
    grids = layer_grids(unet, latent_size) if latent_size is not None else {}

    def merges(layer: str) -> bool:
        """Whether ``layer`` merges tokens at ``latent_size`` (tomesd's test, on the layer's grid)."""
        if config.ratio == 0:
            return False
        if layer not in grids:
            return True
        (hl, wl), (h, w) = latent_size, grids[layer]
        return math.ceil(math.sqrt(hl * wl // (h * w))) <= config.max_downsample

    def unet_hook(module, args, kwargs):
        size[0] = tuple((args[0] if args else kwargs["sample"]).shape[-2:])

    def block_hook(state: _Block):
        def hook(module, args, kwargs):
            x = _block_input(args, kwargs)                        # (B, N, C): tomesd's metric
            (hl, wl), (b, n) = size[0], x.shape[:2]
            down = math.ceil(math.sqrt(hl * wl // n))
            if config.ratio == 0 or down > config.max_downsample:
                state.merge = state.unmerge = _identity
                return None
            r = int(n * config.ratio)
            rand = config.use_rand and b % 2 == 0                 # tomesd: off for odd batches
            state.merge, state.unmerge = bipartite_soft_matching_2d(
                x, math.ceil(hl / down), math.ceil(wl / down), config.sx, config.sy, r, generator if rand else None)
            return None
        return hook

    installed = dict(originals)
    for name, state in blocks.items():
        for kind, on in (("attn1", config.merge_attn), ("attn2", config.merge_crossattn)):
            layer = f"{name}.{kind}.processor"
            if on and layer in originals:
                _refuse(layer, originals[layer], latent_size, merges)
                installed[layer] = MergedAttention(originals[layer], state)
    handles = []
    try:
        handles.append(unet.register_forward_pre_hook(unet_hook, with_kwargs=True))
        for name, state in blocks.items():
            handles.append(modules[name].register_forward_pre_hook(block_hook(state), with_kwargs=True))
            ff = getattr(modules[name], "ff", None)
            if config.merge_mlp and ff is not None:
                handles.append(ff.register_forward_pre_hook(lambda m, args, s=state: (s.merge(args[0]), *args[1:])))
                handles.append(ff.register_forward_hook(lambda m, args, out, s=state: s.unmerge(out)))
        unet.set_attn_processor(installed)
        yield blocks
    finally:
        for h in handles:
            h.remove()
        unet.set_attn_processor(originals)
