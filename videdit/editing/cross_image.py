"""Cross-image attention: structure from the input, appearance from another image (Alaluf et al. 2024).

"Cross-Image Attention for Zero-Shot Appearance Transfer", SIGGRAPH 2024. Defaults follow the
official code, garibida/cross-image-attention: ``config.py`` (``RunConfig``), ``run.py``
(``run_appearance_transfer``), ``appearance_transfer_model.py`` (the attention processor and the
AdaIN callback), ``utils/attention_utils.py``, ``utils/adain.py``, ``utils/segmentation.py``,
``models/stable_diffusion.py`` (the sampling loop) and ``models/unet_2d_condition.py`` (FreeU).

Branches: the structure (the input, replayed), the appearance (another image, held on its own
inversion's trajectory), the output (from the input's inverted noise, as the official output
starts from the structure's latent) and, for the swap guidance, the output again without the
swap ("plain"; its latents are the output's at every step). In the decoder's self-attention
layers on the latent grid and on half of it (SD's 64x64 and 32x32 at 512 px), within each
grid's step window, the output attends to the appearance's keys and values (Eq. 2, with the
output's own queries as the code does; ``queries="structure"`` takes the structure's), except
on every 5th step before 40 of 100, where it takes the structure's (the official's
``step % 5 == 0 and step < 40``). Its attention map is contrasted there (Sec. 4.3),

    A' = clip((A - mean_k A) * contrast + mean_k A, 0, 1)   (mean over keys; not renormalised).

Text guidance is 1 and the output's noise is swap-guided on the steps with a swap (Sec. 4.3),

    eps = eps_plain + w_j (eps_swap - eps_plain),   w_j = linspace(3.5, max(3.5 / 2, 1), n)[j],

j counting the sampled steps, n of them. Above text guidance 1, as the official does instead,
eps = eps_plain(uncond) + g (eps_swap(cond) - eps_plain(uncond)), without swap guidance (the
official's swap then reaches the unconditional half only, an indexing slip, not followed).
From 20 of 100 sampled steps on, the output latents are AdaIN-normalised to the appearance's
after each step (Sec. 4.3, ``utils/adain.py``), within masks by default: the object's pixels
of the structure and of the appearance, found once, at the first AdaIN step, by
self-segmentation of their attention (videdit/editing/self_segmentation.py) and the object's
word (``object_noun``); a frame whose mask is empty keeps its latents (the official statistics
are undefined there). FreeU (videdit/editing/freeu.py) acts on every UNet call of the edit.

Steps are counted as the official counts them: windows are fractions of the schedule's N
(the official's steps of 100) counted from the first sampled step (after ``skip_steps``, the
edit's strength), and the attention's step counter lags the sampler by one step (the official
callback sets it after each step), so the window [10, 90) swaps on sampled steps 11 to 90.

The reference's recipe (configs/cross-image.yaml): 100 steps, edit-friendly DDPM inversion of
both images at guidance 3.5 under one prompt ("A photo of a <domain>"), sampling from step 32
(strength 0.68), text guidance 1. The pipeline inverts the appearance image with the edit's
inversion under ``appearance_prompt`` (through the cache; its own noise seed) and hands it
over in ``EditContext.references``.

Departures: the appearance branch is held on its inversion's latents rather than replayed with
its own noise maps (videdit's sampler replays the input's inversion); the two agree where the
replay is exact, and the official's, inverted at 3.5 and sampled at 1, drifts a little; FreeU
acts on the edit only, not on the inversions (the official UNet has it throughout); the layers
are chosen by grid relative to the latents (the official's fixed 64x64 and 32x32 token counts
hold at 512 px only). Without an appearance image structure =
appearance = the input (two branches and the plain one), videdit's own use.

SDXL (``grid``, a named departure): its decoder has no self-attention on the latent grid (its
last up block has none), so the swap's grids are the decoder's finest self-attention grid and
half of it (:func:`finest_grid`): up_blocks.1 (64x64 at 1024 px, ``latent_window``) and
up_blocks.0 (32x32, ``half_window``), the token counts the official's
``should_mix_keys_and_values`` tests for; the masks come from the last self-attention at the
finer grid and the last cross-attention at the coarser one (the official ``Segmentor``'s 64x64
and 32x32 maps), nearest-upsampled 2x to the latents for AdaIN (the official's masks are at the
latent grid). FreeU keeps SD 1.5's values on SDXL's two widest widths (videdit/editing/freeu.py).
On SD 1.x/2.x ``grid`` resolves to 1, the official layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from videdit.attention import AttentionModule, AttnCall, compose, layers_at
from videdit.core.loop import Branches, CallInfo, StepCallback, StepContext
from videdit.editing.control import check_fraction, step_index
from videdit.editing.freeu import freeu_hooks
from videdit.editing.registry import EditContext, EditPlan, register_editor
from videdit.editing.self_segmentation import object_mask, word_map
from videdit.editing.words import prompt_words, word_positions
from videdit.errors import VideditError
from videdit.registry import NOT_INSTRUCT, departs

EDITOR = "cross_image"
QUERIES = ("output", "structure")


@dataclass(frozen=True)
class CrossImageConfig:
    # path to an image, or an (H, W, 3) uint8 array; None: the input itself
    appearance: Any = departs(None, official="required (--app_image_path)",
                              why="without an appearance image the input is its own appearance (videdit's use)")
    appearance_prompt: str | None = None   # its inversion's and branch's prompt; None: the source prompt
    latent_window: tuple[float, float] = (0.1, 0.9)   # swap on the latent-grid layers (RunConfig.cross_attn_64_range)
    half_window: tuple[float, float] = (0.1, 0.7)     # ... on the half-grid layers (cross_attn_32_range)
    swap_guidance: float = 3.5         # w at the first sampled step, falling to max(w / 2, 1); <= 1: none
    contrast: float = 1.67             # attention contrast on the swapped layers (contrast_strength); 1: none
    adain_window: tuple[float, float] = (0.2, 1.0)    # AdaIN after these sampled steps (adain_range); (1, 1): never
    masked_adain: bool = True          # AdaIN within the object's masks (use_masked_adain); False: whole latents
    # the object's word in both prompts (the official domain name); None: the source prompt's last word
    object_noun: str | None = departs(None, official="required (--domain_name) with masked AdaIN",
                                      why="the official prompt 'A photo of a <domain>' ends with it")
    structure_every: int = 5           # the structure's keys and values on every 5th step ... (0: never)
    structure_until: float = 0.4       # ... before this fraction of the steps
    queries: str = "output"            # "output" (the official code) or "structure" (the structure's queries)
    freeu: tuple[float, float, float, float] | None = (1.2, 1.4, 0.9, 0.2)   # b1, b2, s1, s2; None: off
    # the finer swap grid, as a factor of the latent grid (the coarser one is half of it); None: the decoder's
    # finest self-attention grid, the latent grid on SD 1.x/2.x (the official) and half of it on SDXL
    grid: int | None = departs(None, official="1: SD 1.5's 64x64 latent grid and 32x32 at 512 px (by token count)",
                               why="None: the decoder's finest self-attention grid (1 on SD 1.x/2.x, the "
                                   "official; 2 on SDXL, whose decoder has none on the latent grid: its two finest "
                                   "levels, 64x64 and 32x32 at 1024 px, the official's token counts) and half of it; "
                                   "SDXL's masks are upsampled 2x to the latents")

    def __post_init__(self):
        for name in ("latent_window", "half_window", "adain_window"):
            window = getattr(self, name)
            if not isinstance(window, (tuple, list)) or len(window) != 2:
                raise VideditError(f"{EDITOR} {name} must be [start, end], fractions of the steps, got {window!r}")
            for value in window:
                check_fraction(EDITOR, name, value)
            if window[1] < window[0]:
                raise VideditError(f"{EDITOR} {name} ends ({window[1]}) before it starts ({window[0]})")
            object.__setattr__(self, name, tuple(window))
        check_fraction(EDITOR, "structure_until", self.structure_until)
        if not isinstance(self.structure_every, int) or self.structure_every < 0:
            raise VideditError(f"{EDITOR} structure_every must be a whole number >= 0, got {self.structure_every!r}")
        if self.queries not in QUERIES:
            raise VideditError(f"{EDITOR} queries must be one of {QUERIES}, got {self.queries!r}")
        if self.swap_guidance < 0 or self.contrast < 0:
            raise VideditError(f"{EDITOR} swap_guidance and contrast must be >= 0, got {self.swap_guidance}, "
                               f"{self.contrast}")
        if self.grid is not None and (not isinstance(self.grid, int) or self.grid < 1 or self.grid & (self.grid - 1)):
            raise VideditError(f"{EDITOR} grid must be a power of two (1: the latent grid, 2: half of it) or none, "
                               f"got {self.grid!r}")
        if self.freeu is not None:
            if not isinstance(self.freeu, (tuple, list)) or len(self.freeu) != 4:
                raise VideditError(f"{EDITOR} freeu must be [b1, b2, s1, s2] or none, got {self.freeu!r}")
            object.__setattr__(self, "freeu", tuple(float(v) for v in self.freeu))
        a = self.appearance
        if isinstance(a, (str, Path)):
            if not Path(a).is_file():
                raise VideditError(f"{EDITOR} appearance image {str(a)!r} does not exist; give an image file")
        elif a is not None and not (isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 3
                                    and a.shape[2] == 3):
            raise VideditError(f"{EDITOR} appearance must be an image path or an (H, W, 3) uint8 array")


@dataclass(frozen=True)
class Timing:
    """Which schedule steps each piece acts on, counted as the official code counts them (module
    doc): sampling runs steps ``start`` .. ``n`` - 1; j = i - start is the sampled step's index
    and ``counter(i)`` = max(j - 1, 0) the attention's step counter."""

    start: int
    n: int

    def counter(self, i: int) -> int:
        return max(i - self.start - 1, 0)

    def swap(self, window: tuple[float, float]) -> frozenset[int]:
        """Steps whose attention counter is in the window (``should_mix_keys_and_values``)."""
        lo, hi = step_index(window[0], self.n), step_index(window[1], self.n)
        return frozenset(i for i in range(self.start, self.n) if lo <= self.counter(i) < hi)

    def structure(self, every: int, until: float) -> frozenset[int]:
        """Steps whose counter is a multiple of ``every`` below ``until`` of the steps (the official
        ``step % 5 == 0 and step < 40``): the structure's keys and values instead of the appearance's."""
        if every == 0:
            return frozenset()
        stop = step_index(until, self.n)
        counters = {i: self.counter(i) for i in range(self.start, self.n)}
        return frozenset(i for i, c in counters.items() if c % every == 0 and c < stop)

    def after(self, window: tuple[float, float]) -> frozenset[int]:
        """Steps whose sampled index j is in the window (the AdaIN callback's ``adain_range``)."""
        lo, hi = step_index(window[0], self.n), step_index(window[1], self.n)
        return frozenset(i for i in range(self.start, self.n) if lo <= i - self.start < hi)

    def swap_scales(self, w: float) -> np.ndarray:
        """The swap guidance of each sampled step: linspace(w, max(w / 2, 1), n - start)."""
        return np.linspace(w, max(w / 2, 1.0), self.n - self.start)


def contrast(p: torch.Tensor, strength: float) -> torch.Tensor:
    """Attention probabilities (..., Tq, Tk) contrasted about each row's mean and clipped to
    [0, 1], not renormalised (``enhance_tensor``; a softmax row's mean is 1 / Tk)."""
    mean = p.mean(-1, keepdim=True)
    return ((p - mean) * strength + mean).clamp(0, 1)


def adain(x: torch.Tensor, style: torch.Tensor, mask: torch.Tensor | None = None,
          style_mask: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """AdaIN (Huang & Belongie 2017) of ``x`` (C, h, w) to ``style`` (C, h, w), as ``utils/adain.py``:
    per-channel mean and std = sqrt(unbiased variance + eps), of ``x`` over ``mask`` (h, w) and of
    ``style`` over ``style_mask``; with masks the result is x outside ``mask``. A mask of fewer
    than two pixels leaves ``x`` as it is (its statistics are undefined)."""
    if mask is None:
        mask = style_mask = x.new_ones(x.shape[-2:])
    inside, style_inside = mask.flatten() > 0.5, style_mask.flatten() > 0.5
    if int(inside.sum()) < 2 or int(style_inside.sum()) < 2:
        return x
    xs, ss = x.flatten(1)[:, inside], style.flatten(1)[:, style_inside]     # (C, k)
    mu, sd = xs.mean(1), (xs.var(1) + eps).sqrt()
    mu_s, sd_s = ss.mean(1), (ss.var(1) + eps).sqrt()
    y = (x - mu[:, None, None]) / sd[:, None, None] * sd_s[:, None, None] + mu_s[:, None, None]
    return x * (1 - mask) + y * mask


class SwapAttention(AttentionModule):
    """On ``layers`` (self-attention of one grid) at ``steps``: the output's keys and values from
    the appearance (the structure's at ``structure_steps``), its queries from ``q_from`` (None:
    its own), its attention map contrasted; in both guidance halves. Explicit probabilities only
    on the steps it contrasts."""

    def __init__(self, layers, steps: frozenset[int], structure_steps: frozenset[int], info: CallInfo, *,
                 output: int, appearance: int, structure: int, q_from: int | None, strength: float):
        self.names, self.steps, self.structure_steps, self.info = frozenset(layers), steps, structure_steps, info
        self.target, self.appearance, self.structure, self.q_from = output, appearance, structure, q_from
        self.strength = strength

    def applies(self, layer: str, cross: bool) -> bool:
        return layer in self.names

    def _active(self) -> bool:
        return not self.info.inverting and self.info.step in self.steps

    @property
    def needs_probs(self) -> bool:
        return self.strength != 1 and self._active()

    def qkv(self, call: AttnCall, q, k, v):
        if not self._active():
            return q, k, v
        src = self.structure if call.info.step in self.structure_steps else self.appearance
        return self._take(call, q, self.q_from), self._take(call, k, src), self._take(call, v, src)

    def _take(self, call: AttnCall, x: torch.Tensor, src: int | None) -> torch.Tensor:
        if src is None or src == self.target:
            return x
        xs = call.split(x).clone()                                   # (halves, nb, fb, heads, T, d)
        xs[:, self.target] = xs[:, src]
        return xs.flatten(0, 2)

    def probs(self, call: AttnCall, p: torch.Tensor) -> torch.Tensor:
        if not self.needs_probs:
            return p
        ps = call.split(p).clone()                                   # (halves, nb, fb, heads, Tq, Tk)
        ps[:, self.target] = contrast(ps[:, self.target], self.strength)
        return ps.flatten(0, 2)


class SegmentationStore(AttentionModule):
    """At one ``step``, the conditional half's attention probabilities of ``branches``, averaged
    over heads, on one self-attention and one cross-attention layer: ``self_maps`` and
    ``cross_maps`` {branch: (F, Tq, Tk)}, what the official ``Segmentor.update_attention`` keeps."""

    def __init__(self, self_layer: str, cross_layer: str, step: int, branches: tuple[int, ...], n_frames: int,
                 info: CallInfo):
        self.self_layer, self.cross_layer, self.step, self.branches = self_layer, cross_layer, step, branches
        self.n_frames, self.info = n_frames, info
        self.self_maps: dict[int, torch.Tensor] = {}
        self.cross_maps: dict[int, torch.Tensor] = {}

    def applies(self, layer: str, cross: bool) -> bool:
        return layer == (self.cross_layer if cross else self.self_layer)

    @property
    def needs_probs(self) -> bool:
        return not self.info.inverting and self.info.step == self.step

    def probs(self, call: AttnCall, p: torch.Tensor) -> torch.Tensor:
        if not self.needs_probs:
            return p
        maps = self.cross_maps if call.cross else self.self_maps
        cond = call.split(p)[-1].mean(2).float()                     # (nb, fb, Tq, Tk)
        if not call.cross and cond.shape[-1] != cond.shape[-2]:
            return p   # keys from other frames too (a temporal module's cross-frame attention): no frame's own map
        for b in self.branches:
            if b not in maps:
                maps[b] = cond.new_zeros(self.n_frames, *cond.shape[-2:])
            maps[b][list(call.info.frames)] = cond[b]
        return p


@dataclass
class Masks:
    """The object's masks at the latent grid, (F, h, w) each: the structure's and the appearance's."""

    structure: torch.Tensor
    appearance: torch.Tensor


class CrossImageSteps(StepCallback):
    """The per-step parts: text or swap guidance of the output against the plain branch on the
    swap steps, and after each step the appearance back on its trajectory, the masks (once), the
    output's AdaIN, and the plain branch set to the output."""

    def __init__(self, *, output: int, appearance: int, plain: int | None, trajectory: torch.Tensor | None,
                 swap_steps: frozenset[int], scales: np.ndarray, start: int, text_guided: bool,
                 adain_steps: frozenset[int], masks: Callable[[], Masks] | None = None):
        self.output, self.appearance, self.plain = output, appearance, plain
        self.trajectory, self.swap_steps, self.scales, self.start = trajectory, swap_steps, scales, start
        self.text_guided, self.adain_steps, self.masks = text_guided, adain_steps, masks
        self.found: Masks | None = None

    def on_guidance(self, ctx: StepContext, frames, uncond, cond):
        if self.plain is None or not self.text_guided or ctx.step not in self.swap_steps:
            return uncond, cond
        uncond = uncond.clone()                                      # (nb, fb, C, h, w)
        uncond[self.output] = uncond[self.plain]                     # eps_plain(u) + g (eps_swap(c) - eps_plain(u))
        return uncond, cond

    def on_noise(self, ctx: StepContext, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.plain is None or self.text_guided or ctx.step not in self.swap_steps:
            return out
        w = float(self.scales[ctx.step - self.start])
        out = out.clone()                                            # (nb, F, C, h, w)
        out[self.output] = out[self.plain] + w * (out[self.output] - out[self.plain])
        return out

    def on_step_end(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        if self.trajectory is not None:
            x[self.appearance] = self.trajectory[ctx.step + 1].to(x)  # (F, C, h, w), broadcast from 1 frame
        if self.masks is not None and self.found is None and ctx.step in self.adain_steps:
            self.found = self.masks()   # None while no UNet call has recorded the maps (BDIA's first step)
        if ctx.step in self.adain_steps and (self.masks is None or self.found is not None):
            for f in range(x.shape[1]):
                masks = () if self.found is None else (self.found.structure[f], self.found.appearance[f])
                x[self.output, f] = adain(x[self.output, f], x[self.appearance, f], *masks)
        if self.plain is not None:
            x[self.plain] = x[self.output]
        return x


def _last_word(prompt: str, tokens) -> str:
    words = prompt_words(tokens)
    if not words:
        raise VideditError(f"{EDITOR}'s masked AdaIN needs the object's word: set object_noun (a word of the "
                           f"source and appearance prompts, the official's domain name) or masked_adain=false")
    return words[-1][0]


def _grid_at(latent: tuple[int, int], factor: int) -> tuple[int, int]:
    """The token grid at 1/``factor`` (a power of two) of ``latent``: halved that often, each
    time rounding up as a stride-2 convolution does."""
    size = tuple(latent)
    while factor > 1:
        size, factor = (-(-size[0] // 2), -(-size[1] // 2)), factor // 2
    return size


def _upsample(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A mask (h', w') nearest-upsampled to ``size`` (h, w), cropped where the grid rounded up."""
    m = mask.repeat_interleave(-(-size[0] // mask.shape[0]), 0).repeat_interleave(-(-size[1] // mask.shape[1]), 1)
    return m[:size[0], :size[1]]


def _mask_finder(ctx: EditContext, config: CrossImageConfig, store: SegmentationStore, structure: int,
                 appearance: int, app_prompt: str, latent: tuple[int, int], grid: int):
    """() -> :class:`Masks` from the store's maps (self-attention at 1/``grid`` of the latents,
    cross-attention at half of it) and the object word's tokens in each branch's prompt; found on
    the self-attention's grid (the official's 64x64, the latent grid on SD 1.5) and nearest-
    upsampled to the latent grid where that is finer (SDXL: 2x)."""
    noun = config.object_noun or _last_word(ctx.source_prompt, ctx.model.tokens(ctx.source_prompt))
    prompts = {structure: ctx.source_prompt, appearance: app_prompt}
    tokens = {b: word_positions(ctx.model.tokens(p), noun, p) for b, p in prompts.items()}
    fine, coarse = _grid_at(latent, grid), _grid_at(latent, 2 * grid)

    def find() -> Masks | None:
        if any(b not in store.self_maps or b not in store.cross_maps for b in tokens):
            return None
        out = {}
        for b, positions in tokens.items():
            sa, ca = store.self_maps[b], store.cross_maps[b]           # (F, T, T), (F, T', L)
            out[b] = torch.stack([_upsample(object_mask(sa[f], word_map(ca[f][:, positions].mean(-1), coarse, fine)),
                                            latent) for f in range(sa.shape[0])])   # (F, h, w)
        return Masks(structure=out[structure], appearance=out[appearance])

    return find


def _decoder(names: list[str]) -> list[str]:
    return [n for n in names if n.startswith("up_blocks.")]


def finest_grid(unet, latent: tuple[int, int]) -> int | None:
    """The factor (1, 2, 4, ...) of the decoder's finest self-attention grid below the ``latent``
    grid: 1 on SD 1.x/2.x (up_blocks.3), 2 on SDXL (up_blocks.1; its up_blocks.2 has none); None
    where the decoder has no self-attention."""
    f = 1
    while max(latent) // f >= 1:
        if _decoder(layers_at(unet, latent, f, cross=False)):
            return f
        f *= 2
    return None


def swap_layers(unet, latent: tuple[int, int], grid: int | None = None) -> dict[int, list[str]]:
    """{g: the decoder's self-attention layers at ``grid`` g, 2 g: those at half of it}, g = ``grid``
    or the finest (:func:`finest_grid`): SD 1.5's up_blocks.3 (64x64) and up_blocks.2 (32x32) at
    512 px, where the official swaps (``should_mix_keys_and_values``: 64**2 and 32**2 tokens);
    SDXL's up_blocks.1 (64x64) and up_blocks.0 (32x32) at 1024 px, the same token counts."""
    g = grid or finest_grid(unet, latent) or 1
    return {f: _decoder(layers_at(unet, latent, f, cross=False)) for f in (g, 2 * g)}


def segmentation_layers(unet, latent: tuple[int, int], grid: int | None = None) -> tuple[str, str] | None:
    """The last decoder self-attention layer at ``grid`` (or the finest) and the last
    cross-attention layer at half of it, the maps the official ``Segmentor`` keeps (each layer
    overwrites the one before; 64x64 self- and 32x32 cross-attention); None where the model lacks
    either."""
    g = grid or finest_grid(unet, latent) or 1
    self_layers = _decoder(layers_at(unet, latent, g, cross=False))
    cross_layers = _decoder(layers_at(unet, latent, 2 * g, cross=True))
    return (self_layers[-1], cross_layers[-1]) if self_layers and cross_layers else None


@register_editor(EDITOR, CrossImageConfig, source_branch=True, references={"appearance": "appearance_prompt"},
                 reference="Alaluf et al. 2024, Cross-Image Attention for Zero-Shot Appearance Transfer "
                           "(SIGGRAPH); github.com/garibida/cross-image-attention (config.py, run.py)",
                 steps=100, guidance=1.0, strength=0.68,
                 models={"families": ("SD1", "SD2", "SDXL"), "refuses": dict(NOT_INSTRUCT)})
def cross_image(ctx: EditContext, config: CrossImageConfig) -> EditPlan:
    """Cross-image attention (Alaluf et al. 2024): the output reads an appearance image's keys and values."""
    unet, n = ctx.model.unet, len(ctx.schedule)
    noise = ctx.inversion.noise                                       # (F, C, h, w)
    n_frames, latent = noise.shape[0], tuple(noise.shape[-2:])
    start = ctx.inversion.start_step
    app_prompt = ctx.source_prompt if config.appearance_prompt is None else config.appearance_prompt
    trajectory = None
    if config.appearance is None:
        structure = appearance = 0
        output = 1
        x = [noise, noise]
        cond = [ctx.source_cond, ctx.target_cond]
    else:
        structure, appearance, output = 0, 1, 2
        trajectory = ctx.references["appearance"].trajectory         # (N+1, 1, C, h, w)
        x = [noise, trajectory[start, 0].expand_as(noise).to(noise), noise]
        cond = [ctx.source_cond, ctx.model.encode_text([app_prompt]).to(ctx.source_cond), ctx.target_cond]
    text_guided = ctx.guidance > 1
    plain = None
    if text_guided or config.swap_guidance > 1:
        plain = len(x)
        x.append(noise)
        cond.append(ctx.target_cond)
    x = torch.stack(x)                                                # (nb, F, C, h, w)
    nb = x.shape[0]
    branches = Branches(cond=torch.cat(cond), uncond=ctx.uncond.expand(nb, *ctx.uncond.shape[1:]),
                        guidance=(ctx.guidance,) * nb)

    timing, info = Timing(start, n), CallInfo()
    grid = config.grid or finest_grid(unet, latent) or 1          # SD 1.x/2.x: 1, the latent grid; SDXL: 2
    grids = {grid: config.latent_window, 2 * grid: config.half_window}   # latent / factor -> its window
    layers = swap_layers(unet, latent, grid)
    if not any(layers.values()):
        raise VideditError(f"{EDITOR}: the model's decoder has no self-attention layer at 1/{grid} of the {latent} "
                           f"latent grid or at half of it; set grid to another power of two, or none")
    structure_steps = timing.structure(config.structure_every, config.structure_until)
    q_from = structure if config.queries == "structure" else None
    modules: list[AttentionModule] = [
        SwapAttention(layers[f], timing.swap(grids[f]), structure_steps, info, output=output, appearance=appearance,
                      structure=structure, q_from=q_from, strength=config.contrast)
        for f in grids if layers[f]]
    swap_steps = frozenset().union(*(m.steps for m in modules))
    adain_steps = timing.after(config.adain_window)
    masks = None
    if config.masked_adain and adain_steps:
        found = segmentation_layers(unet, latent, grid)
        if found is None:
            raise VideditError(f"{EDITOR}: masked AdaIN reads decoder self-attention at 1/{grid} of the latent grid "
                               f"and cross-attention at half of that, and this model has not both; set "
                               f"masked_adain=false")
        store = SegmentationStore(*found, min(adain_steps), (structure, appearance), n_frames, info)
        modules.append(store)
        masks = _mask_finder(ctx, config, store, structure, appearance, app_prompt, latent, grid)
    steps = CrossImageSteps(output=output, appearance=appearance, plain=plain, trajectory=trajectory,
                            swap_steps=swap_steps, scales=timing.swap_scales(config.swap_guidance), start=start,
                            text_guided=text_guided, adain_steps=adain_steps, masks=masks)
    hooks = freeu_hooks(unet, *config.freeu) if config.freeu is not None else None
    return EditPlan(x=x, branches=branches, callbacks=[steps], processors=compose(unet, modules, info), hooks=hooks,
                    info=info, output_branch=output, source_branch=structure,
                    uncontrolled=(appearance,) if trajectory is not None else ())
