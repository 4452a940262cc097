"""Which attention layers an editor or temporal module acts on: glob patterns over processor names, and the
token grid each layer sees at a given latent size (so that an editor can ask for "the
self-attention layers of at most 256 tokens" before the first UNet call).

A glob may name a UNet level by its depth among the levels that have attention, so that one
default fits SD 1.x/2.x and SDXL (:func:`expand_levels`): ``up@0`` is the first decoder
block with attention (SD 1.x's ``up_blocks.1``, SDXL's ``up_blocks.0``: both at 1/4 of the
latent grid at the native size), ``up@1+`` every one after it (SD 1.x's ``up_blocks.2`` and
``up_blocks.3``, SDXL's ``up_blocks.1``), ``down@K`` likewise in the encoder. (``@`` rather
than braces or angle brackets: YAML and the shell take it as it is.)
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Iterable, Sequence

from videdit.errors import VideditError

_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^(mid_block)\.")
_LEVEL = re.compile(r"(?<![\w.])(up|down)@(\d+)(\+?)")   # up@K, up@K+, down@K, down@K+


def attention_blocks(unet, side: str) -> list[int]:
    """Indices of ``unet``'s ``up_blocks`` (``side="up"``) or ``down_blocks`` that have attention
    layers, in order: SD 1.x's up blocks [1, 2, 3], SDXL's [0, 1]."""
    blocks = unet.up_blocks if side == "up" else unet.down_blocks
    return [i for i, block in enumerate(blocks) if getattr(block, "attentions", None)]


def expand_levels(unet, globs: Sequence[str]) -> tuple[str, ...]:
    """``globs`` with each level by depth replaced by block names of ``unet``: ``up@K`` -> the
    K-th up block with attention (``up_blocks.i``), ``up@K+`` -> one glob per such block from the
    K-th on, ``down@K``, ``down@K+`` likewise; a level the model lacks drops its glob. Plain globs pass as
    they are."""
    out: list[str] = []
    for glob in globs:
        m = _LEVEL.search(glob)
        if m is None:
            out.append(glob)
            continue
        side, k = m.group(1), int(m.group(2))
        blocks = attention_blocks(unet, side)
        chosen = blocks[k:] if m.group(3) else blocks[k:k + 1]
        out += expand_levels(unet, [f"{glob[:m.start()]}{side}_blocks.{i}{glob[m.end():]}" for i in chosen])
    return tuple(out)


def select_layers(names: Iterable[str], patterns: str | Sequence[str]) -> list[str]:
    """The names matching any of the glob ``patterns`` (one glob or several), in order."""
    patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
    return [n for n in names if any(fnmatchcase(n, p) for p in patterns)]


def _halve(size: tuple[int, int]) -> tuple[int, int]:
    return -(-size[0] // 2), -(-size[1] // 2)  # a stride-2 convolution rounds up


def layer_grids(unet, latent_size: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """{processor name: (h, w) token grid} of ``unet`` 's attention layers for latents of
    ``latent_size``. Read off diffusers' UNet2DConditionModel structure: down block i runs at
    the latent size halved once per downsampler before it, the mid block below the last one,
    and each up block at the size its upsamplers have climbed back to."""
    sizes = [tuple(latent_size)]                       # sizes[level]: the grid at that depth
    down_level, level = {}, 0
    for i, block in enumerate(unet.down_blocks):
        down_level[i] = level
        if getattr(block, "downsamplers", None) is not None:
            level += 1
            sizes.append(_halve(sizes[-1]))
    mid_level, up_level = level, {}
    for i, block in enumerate(unet.up_blocks):
        up_level[i] = level
        if getattr(block, "upsamplers", None) is not None:
            level -= 1
    grids = {}
    for name in unet.attn_processors:
        m = _BLOCK.match(name)
        if m is None:
            continue  # not a block of the standard UNet: its grid is unknown
        if m.group(3):
            lv = mid_level
        else:
            lv = (down_level if m.group(1) == "down_blocks" else up_level)[int(m.group(2))]
        grids[name] = sizes[max(0, lv)]
    return grids


def layers_at(unet, latent_size: tuple[int, int], factor: int, *, cross: bool | None = None) -> list[str]:
    """Attention layers whose grid is the latent grid downsampled ``factor`` times
    (a power of two), e.g. SD's 16x16 layers at 512 px with factor 4."""
    size = tuple(latent_size)
    f = 1
    while f < factor:
        size, f = _halve(size), f * 2
    return [n for n, g in layer_grids(unet, latent_size).items()
            if g == size and (cross is None or n.endswith("attn2.processor") == cross)]


def patterns(owner: str, name: str, value) -> tuple[str, ...]:
    """A glob or a list of globs (YAML gives lists) -> a tuple of globs."""
    globs = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, (list, tuple)) else ()
    if not globs or not all(isinstance(p, str) and p for p in globs):
        raise VideditError(f"{owner} {name} must be a glob or a list of globs over layer names, "
                           f"e.g. 'up_blocks.*attn1*' or 'up@1+.*attn1*', got {value!r}")
    return globs


def choose_layers(unet, globs: Sequence[str], owner: str, name: str, *, cross: bool) -> list[str]:
    """The self- (``cross=False``) or cross-attention layers matching ``globs`` (levels by depth
    expanded: :func:`expand_levels`); none is an error."""
    kind = "attn2" if cross else "attn1"
    found = [n for n in select_layers(unet.attn_processors, expand_levels(unet, globs))
             if n.endswith(f"{kind}.processor")]
    if not found:
        some = [n for n in unet.attn_processors if n.endswith(f"{kind}.processor")]
        raise VideditError(f"{owner} {name} {list(globs)} match no {kind} layer of this model; "
                           f"its {kind} layers are {some}")
    return found
