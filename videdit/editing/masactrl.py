"""MasaCtrl: mutual self-attention, the target querying the source's keys and values (Cao et al. 2023).

"MasaCtrl: Tuning-Free Mutual Self-Attention Control for Consistent Image Synthesis and
Editing", ICCV 2023, Sec. 4.1-4.2. Defaults follow the official code,
github.com/TencentARC/MasaCtrl (``masactrl/masactrl.py`` ``MutualSelfAttentionControl``,
``masactrl/diffuser_utils.py`` ``MasaCtrlPipeline``, and the real-image recipe of
``playground_real.ipynb``). The source (branch 0) is replayed beside the target (branch 1)
from the inverted noise, as the notebook does (its ``ref_intermediate_latents``, the pinned
source of ``--source-branch pinned``, is left commented out there). From step ``start`` on
(a fraction: the official ``start_step=4`` of its ``total_steps=50``), in the self-attention
layers matching ``layers``, the target attends with its own queries to the source's content
(Eq. 3): Attention(Q_tgt, K_src, V_src), each guidance half to the same half of the source.
The default layers are SD's decoder blocks from the official ``start_layer=10`` of its 16
transformer blocks on (counted in the order the UNet runs them: 6 down, 1 mid, 9 up), i.e.
``up_blocks.2`` and ``up_blocks.3``, named by depth (``up@1+``: the decoder levels with
attention after the first, :func:`~videdit.attention.layers.expand_levels`) so that on SDXL
they are ``up_blocks.1``, its decoder's attention at 1/2 of the latent grid.

The official real-image recipe (``playground_real.ipynb``) inverts with DDIM at guidance 7.5
under the source prompt "" (so the inversion and the source branch are unguided in effect:
the empty prompt's prediction is also the unconditional one), samples 50 steps at guidance
7.5 and builds its scheduler with diffusers' default ``steps_offset=0``;
``configs/masactrl.yaml`` sets all of these. With a non-empty source prompt, a source branch
inverted at guidance 1 and replayed at 7.5 drifts from the source.

Mask-guided mutual self-attention (Sec. 4.2, Eq. 5-6): given the source's foreground mask
M_s and the target's M_t (``mask`` / ``target_mask``: image or .npy paths or tensors, any size
with the frames' aspect ratio, resized to the latents as every videdit mask is), foreground
queries attend only to the source's foreground keys and background queries to its background,
out = M_t * Attn(Q_t, K_s, V_s; M_s) + (1 - M_t) * Attn(Q_t, K_s, V_s; 1 - M_s). Masks can
instead come from the cross-attention of a word (``mask_word`` in the source prompt,
``target_mask_word`` in the target prompt), as the reference's ``MutualSelfAttentionControl
MaskAuto``: maps of the layers at 1/``mask_factor`` of the latent size (0: about 16x16 maps,
:func:`~videdit.editing.control.auto_map_factor`, the reference's 4 on SD), min-max normalised
per frame, thresholded at ``mask_threshold``. Deviations: word masks average the maps of
all steps so far (the reference uses the current step's only); a word mask is used once any
map is recorded, before that the attention is unmasked mutual attention as in the reference;
masks are resized to each layer's grid by nearest neighbour (as the reference); the source's
is binarised at 0.5 to select keys, the target's weighs the two outputs as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from videdit.attention import AttentionModule, choose_layers, compose, patterns
from videdit.core.loop import CallInfo
from videdit.editing.control import (SOURCE, TARGET, InjectQKV, LayerStore, auto_map_factor, check_fraction,
                                     check_map_factor, cross_layers_at, step_index,
                                     two_branches)
from videdit.editing.masks import frames_shape, load_mask, validate_mask_source
from videdit.editing.registry import EditContext, EditPlan, register_editor
from videdit.editing.words import word_positions
from videdit.errors import VideditError

EDITOR = "masactrl"


@dataclass(frozen=True)
class MasaCtrlConfig:
    start: float = 0.08                # mutual attention from this fraction of the steps on (start_step=4 of 50)
    # globs over self-attention processors: start_layer=10 of SD's 16 transformer blocks, up_blocks.2-3
    layers: tuple[str, ...] = ("up@1+.*attn1.processor",)
    mask: Any = None                   # the source's foreground (1): an image or .npy path, or a tensor (masks.py)
    target_mask: Any = None            # the same for the target (default: ``mask``)
    mask_word: str = ""                # or: the source mask from this word's cross-attention ...
    target_mask_word: str = ""         # ... and the target's from this word of the target prompt (default: mask_word)
    mask_threshold: float = 0.1        # word masks: min-max normalised attention > this
    mask_factor: int = 0               # word masks: maps of the layers at 1/factor of the latents;
    #                                    0: auto (about 16x16)

    def __post_init__(self):
        check_fraction(EDITOR, "start", self.start)
        object.__setattr__(self, "layers", patterns(EDITOR, "layers", self.layers))
        for name in ("mask", "target_mask"):
            validate_mask_source(getattr(self, name), f"{EDITOR} {name}")
        if self.target_mask is not None and self.mask is None:
            raise VideditError(f"{EDITOR} target_mask needs mask (the source's foreground) as well")
        if self.mask is not None and self.mask_word:
            raise VideditError(f"{EDITOR}: give mask or mask_word, not both")
        if self.target_mask_word and not self.mask_word:
            raise VideditError(f"{EDITOR} target_mask_word needs mask_word (the source prompt's word) as well")
        if not 0 <= self.mask_threshold <= 1:
            raise VideditError(f"{EDITOR} mask_threshold must be in [0, 1], got {self.mask_threshold}")
        check_map_factor(self.mask_factor, EDITOR, "mask_factor")


def _per_frame(value, x: torch.Tensor, scale: int) -> torch.Tensor:
    """A mask option (path, tensor or array; see ``masks.load_mask``) -> (F, h, w) float at
    the latent size of ``x`` (nb, F, C, h, w)."""
    latent, frame = frames_shape(x, scale)
    m = load_mask(value, latent, frame_size=frame, n_frames=x.shape[1])       # (F or 1, 1, h, w)
    return m[:, 0].expand(x.shape[1], *latent)


def _binary(m: torch.Tensor, threshold: float) -> torch.Tensor:
    """(F, h, w) maps -> (F, h, w) float in {0, 1}: min-max normalised per frame, thresholded."""
    lo = m.amin(dim=(-2, -1), keepdim=True)
    hi = m.amax(dim=(-2, -1), keepdim=True)
    return ((m - lo) / (hi - lo).clamp(min=torch.finfo(m.dtype).tiny) > threshold).float()


class MaskedMutualAttention(AttentionModule):
    """Mask-guided mutual self-attention: recomputes the target's rows of the attention
    output from the source's keys and values, foreground and background apart."""

    cross = False

    def __init__(self, layers, steps: range, masks):
        self.names, self.steps = frozenset(layers), steps
        self.masks = masks            # () -> (source (F, h, w), target (F, h, w)) or None
        self._qkv = None

    def applies(self, layer: str, cross: bool) -> bool:
        return layer in self.names

    def qkv(self, call, q, k, v):
        active = not call.info.inverting and call.info.step in self.steps
        self._qkv = (q, k, v) if active else None
        return q, k, v

    def output(self, call, out):
        if self._qkv is None:
            return out
        q, k, v = (call.split(t) for t in self._qkv)          # each (halves, nb, fb, heads, T, d)
        self._qkv = None
        masks = self.masks()
        qt, ks, vs = q[:, TARGET], k[:, SOURCE], v[:, SOURCE]  # (halves, fb, heads, T, d)
        if masks is None:   # no word map yet: plain mutual attention
            o = F.scaled_dot_product_attention(qt, ks, vs)
        else:
            frames = list(call.info.frames)
            grid = call.spatial()
            ms, mt = (F.interpolate(m[frames][:, None], size=grid, mode="nearest").flatten(1)
                      for m in masks)                          # each (fb, T)
            keys = ms > 0.5                                    # the source's foreground keys
            mt = mt.to(qt.dtype)[None, :, None, :, None]       # (1, fb, 1, T, 1)
            o = mt * self._attend(qt, ks, vs, keys) + (1 - mt) * self._attend(qt, ks, vs, ~keys)
        o = o.transpose(-3, -2).flatten(-2)                    # (halves, fb, T, heads * d)
        outs = call.split(out).clone()                         # (halves, nb, fb, T, heads * d)
        outs[:, TARGET] = o.to(out.dtype)
        return outs.flatten(0, 2)

    @staticmethod
    def _attend(q, k, v, keys: torch.Tensor) -> torch.Tensor:
        """Attention of q to the keys where ``keys`` (fb, T) is set (all keys for a frame with none),
        at SDPA's default scale 1/sqrt(d), which is diffusers' ``attn.scale`` for SD's layers."""
        keys = keys | ~keys.any(-1, keepdim=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keys[None, :, None, None, :])


def _word_masks(ctx: EditContext, config: MasaCtrlConfig, n_frames: int, latent):
    src = word_positions(ctx.model.tokens(ctx.source_prompt), config.mask_word, ctx.source_prompt)
    tgt_word = config.target_mask_word or config.mask_word
    tgt = word_positions(ctx.model.tokens(ctx.target_prompt), tgt_word, ctx.target_prompt)
    factor = config.mask_factor or auto_map_factor(latent, unet=ctx.model.unet)
    layers = cross_layers_at(ctx.model.unet, latent, factor, EDITOR, "mask_factor")
    store = LayerStore(src + tgt, n_frames, layers)

    def masks():
        if store.total is None:
            return None
        maps = store.maps()                                    # (nb, F, k, h, w)
        return (_binary(maps[SOURCE, :, :len(src)].sum(1), config.mask_threshold),
                _binary(maps[TARGET, :, len(src):].sum(1), config.mask_threshold))

    return store, masks


@register_editor(EDITOR, MasaCtrlConfig, source_branch=True,
                 reference="Cao et al., ICCV 2023; github.com/TencentARC/MasaCtrl (masactrl/masactrl.py, "
                           "masactrl/diffuser_utils.py, playground_real.ipynb)")
def masactrl(ctx: EditContext, config: MasaCtrlConfig) -> EditPlan:
    """MasaCtrl (Cao et al. 2023): mutual self-attention, target queries on the source's keys and values."""
    unet, n = ctx.model.unet, len(ctx.schedule)
    x, branches = two_branches(ctx)
    n_frames, latent = x.shape[1], tuple(x.shape[-2:])
    layers = choose_layers(unet, config.layers, EDITOR, "layers", cross=False)
    steps = range(step_index(config.start, n), n)
    modules: list[AttentionModule] = []
    if config.mask is not None:
        scale = ctx.model.vae_scale_factor
        ms = _per_frame(config.mask, x, scale)
        mt = ms if config.target_mask is None else _per_frame(config.target_mask, x, scale)
        modules.append(MaskedMutualAttention(layers, steps, lambda: (ms, mt)))
    elif config.mask_word:
        store, masks = _word_masks(ctx, config, n_frames, latent)
        modules += [store, MaskedMutualAttention(layers, steps, masks)]
    else:
        modules.append(InjectQKV(layers, steps, TARGET, k_from=SOURCE, v_from=SOURCE))
    info = CallInfo()
    return EditPlan(x=x, branches=branches, processors=compose(unet, modules, info), info=info,
                    output_branch=TARGET, source_branch=SOURCE)
