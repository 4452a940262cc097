"""What the attention editors share: two-branch plans (source replayed beside the edit),
step windows given as fractions of the schedule, layer selection by glob, and an attention
module that hands one branch's queries, keys or values to another."""

from __future__ import annotations

from typing import Collection, Sequence

import torch

from videdit.attention import AttentionModule, AttnCall, CrossAttentionStore, layer_grids, layers_at
from videdit.core.loop import Branches
from videdit.errors import VideditError

SOURCE, TARGET = 0, 1   # branches of a two-branch plan


def step_index(fraction: float, n_steps: int) -> int:
    """The schedule step a fraction of ``n_steps`` falls on, rounded down as the reference
    codes do (``int(0.8 * 50) == 40``); the epsilon keeps 0.3 * 10 from landing on 2."""
    return int(fraction * n_steps + 1e-9)


def step_window(start: float, end: float, n_steps: int) -> range:
    """Steps i with ``step_index(start) <= i < step_index(end)``."""
    return range(step_index(start, n_steps), step_index(end, n_steps))


def cross_window(end: float, n_steps: int) -> range:
    """The steps whose cross-attention maps are replaced for ``cross_replace=end``: ptp_utils'
    ``get_time_words_attention_alpha`` sets alpha rows ``[0, int(end * (n_steps + 1)))`` of its
    ``n_steps + 1`` (the same 40 as ``int(0.8 * 50)`` at 50 steps; 3 of 3 steps at 0.8, not 2)."""
    return range(min(step_index(end, n_steps + 1), n_steps))


def check_fraction(editor: str, name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise VideditError(f"{editor} {name} must be a fraction of the steps in [0, 1], got {value!r}")


def word_scales(editor: str, reweight, example: str) -> dict[str, float]:
    """A ``reweight`` option ({word: scale}, scales in [0, 100]) checked -> {word: float scale};
    ``example`` shows the form in the error."""
    reweight = dict(reweight or {})
    for word, scale in reweight.items():
        if not isinstance(word, str) or not isinstance(scale, (int, float)) or not 0 <= scale <= 100:
            raise VideditError(f"{editor} reweight must map words to scales in [0, 100], e.g. "
                               f"{example}, got {word!r}: {scale!r}")
    return {w: float(s) for w, s in reweight.items()}


def two_branches(ctx, source_cond: torch.Tensor | None = None,
                 source_guidance: float | None = None) -> tuple[torch.Tensor, Branches]:
    """Source (branch 0) and target (branch 1) from the same inverted noise: latents
    (2, F, C, h, w) and their text branches, both at the edit's guidance. ``source_cond``
    (1, L, D) and ``source_guidance`` replace the source branch's text (the source prompt's)
    and scale (plug-and-play computes the source's features under the empty prompt, unguided)."""
    x = ctx.inversion.noise[None].repeat(2, 1, 1, 1, 1)              # (2, F, C, h, w)
    source_cond = ctx.source_cond if source_cond is None else source_cond
    cond = torch.cat([source_cond.to(ctx.target_cond), ctx.target_cond])   # (2, L, D)
    uncond = ctx.uncond.expand(2, *ctx.uncond.shape[1:])              # (2, L, D)
    guidance = (ctx.guidance if source_guidance is None else source_guidance, ctx.guidance)
    return x, Branches(cond=cond, uncond=uncond, guidance=guidance)


class InjectQKV(AttentionModule):
    """Within ``steps``, on the layers named in ``layers``, branch ``target`` takes its
    queries from branch ``q_from``, keys from ``k_from`` and values from ``v_from`` (None
    keeps its own); each guidance half from the same half of the source, or the conditional
    half only (``cond_only``), or every half from the source's conditional half
    (``from_cond``: plug-and-play computes the source's features once, unguided, and hands
    them to both halves of the target). Needs no attention probabilities, so the layer stays
    on fused attention."""

    def __init__(self, layers: Collection[str], steps: range, target: int, *, q_from: int | None = None,
                 k_from: int | None = None, v_from: int | None = None, cond_only: bool = False,
                 from_cond: bool = False):
        if cond_only and from_cond:
            raise ValueError("InjectQKV: cond_only and from_cond exclude each other")
        self.names, self.steps, self.target = frozenset(layers), steps, target
        self.sources = (q_from, k_from, v_from)
        self.cond_only, self.from_cond = cond_only, from_cond

    def applies(self, layer: str, cross: bool) -> bool:
        return layer in self.names

    def active(self, call: AttnCall) -> bool:
        return not call.info.inverting and call.info.step in self.steps

    def qkv(self, call, q, k, v):
        if not self.active(call):
            return q, k, v
        return tuple(self._take(call, x, src) for x, src in zip((q, k, v), self.sources))

    def _take(self, call: AttnCall, x: torch.Tensor, src: int | None) -> torch.Tensor:
        if src is None or src == self.target:
            return x
        xs = call.split(x).clone()                                   # (halves, nb, fb, heads, T, d)
        if self.from_cond:
            xs[:, self.target] = xs[-1:, src]                         # the conditional half, to every half
        else:
            halves = slice(-1, None) if self.cond_only else slice(None)
            xs[halves, self.target] = xs[halves, src]
        return xs.flatten(0, 2)                                      # (B, heads, T, d)


class LayerStore(CrossAttentionStore):
    """A :class:`CrossAttentionStore` on the named cross-attention layers only (those at one
    grid, say), so that the other layers keep fused attention."""

    def __init__(self, tokens: Sequence[int], n_frames: int, layers: Collection[str]):
        super().__init__(tokens, n_frames)
        self.names = frozenset(layers)

    def applies(self, layer: str, cross: bool) -> bool:
        return cross and layer in self.names


def auto_map_factor(latent: tuple[int, int], cells: int = 16, unet=None) -> int:
    """The largest power of two f with latents / f still >= ``cells`` on the short side (1 at
    least), for word masks read from cross-attention maps: SD's 64x64 latents -> 4 (the
    reference codes' 16x16 maps), the toy model's 16x16 -> 1 (a fixed 4 would read its 4x4 mid
    block, whose dilated mask covers the frame). With ``unet``, among the factors where it has
    cross-attention (the largest at most f, else the smallest): SDXL's 128x128 latents -> 4
    (32x32 maps; it has none at 1/8), tiny-sdxl's 32x32 -> 2."""
    f = 1
    while min(latent) // (2 * f) >= cells:
        f *= 2
    if unet is None:
        return f
    have = [g for g in (2 ** i for i in range(8)) if layers_at(unet, latent, g, cross=True)]
    return max((g for g in have if g <= f), default=min(have, default=f))


def check_map_factor(value, editor: str, option: str) -> None:
    """``option`` is 0 (auto, :func:`auto_map_factor`) or a power of two >= 1."""
    if not isinstance(value, int) or value < 0 or (value and value & (value - 1)):
        raise VideditError(f"{editor} {option} must be 0 (auto) or a power of two >= 1 (4: SD's 16x16 maps "
                           f"at 512 px), got {value!r}")


def cross_layers_at(unet, latent: tuple[int, int], factor: int, editor: str, option: str) -> list[str]:
    """Cross-attention layers whose token grid is 1/``factor`` of the latents; a VideditError
    naming the grids there are (and ``option`` to change) when none is."""
    layers = layers_at(unet, latent, factor, cross=True)
    if not layers:
        grids = sorted({g for n, g in layer_grids(unet, latent).items() if n.endswith("attn2.processor")})
        raise VideditError(f"{editor}: no cross-attention layer runs at 1/{factor} of the "
                           f"{latent[0]}x{latent[1]} latents; its grids are {grids}: choose {option} accordingly")
    return layers
