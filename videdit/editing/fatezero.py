"""FateZero: fuse the attention maps stored while inverting into the edit (Qi et al. 2023).

"FateZero: Fusing Attentions for Zero-shot Text-based Video Editing", ICCV 2023, Sec. 4.1-4.2.
Follows github.com/ChenyangQiQi/FateZero, ``video_diffusion/prompt_attention/attention_util.py``
(``AttentionControlEdit.forward``, ``AttentionRefine``, ``AttentionReplace``, ``AttentionReweight``,
``make_controller``) and ``spatial_blend.py`` (``SpatialBlender``), with ``use_inversion_attention:
True`` as in all its configs. It reads the maps the ``fatezero`` inversion stored (the record's
extras ``attn.*``, ``attn_q.*``, ``attn_k.*``): only the edit runs, one branch under the target
prompt with guidance, so a frame costs the edit's UNet evaluations alone.

On the layers of at most ``max_tokens`` query tokens (``attn.shape[-2] <= 32 ** 2``: no fusion on
SD's 64x64 layers at 512 px), in the conditional half, at step i (the inversion's maps at the
same timestep, ``step_in_store = N - cur_step - 1`` in the reference's inversion order):

* cross-attention, for the first ``cross_replace`` of the steps: refinement (``AttentionRefine``,
  ``is_replace_controller: False`` in the zero-shot configs) or word swap (``replace``, with
  ``seq_aligner.get_replacement_mapper``; a refinement where the prompts' word counts differ, as
  ``p2preplace_edit``'s ``equal_length``) of the stored maps, then re-weighting of the words in
  ``reweight`` (``eq_params``; the style configs amplify the style word, e.g. ``{watercolor: 10}``):
  :func:`~videdit.editing.prompt_to_prompt.map_edit`;
* self-attention, for the first ``self_replace`` of the steps: the stored maps
  (``replace_self_attention``), or with ``blend_words`` the *attention blend*
  ``mask * own + (1 - mask) * stored``, the mask from the stored cross-attention of the source
  prompt's ``blend_words`` at this step (``SpatialBlender(prompt_choose='source')``): on the
  cross-attention layers at 1/``blend_factor`` of the latents (SD's 16x16: the reference's
  ``down_cross[2:4] + up_cross[:3]``), summed over the words' tokens, averaged over layers and
  heads, max-pooled over 3x3 cells, resized to the self-attention layer's grid (nearest),
  divided by each frame's maximum and thresholded at ``blend_threshold`` (``blend_th``).

``blend_latents`` is the reference's off-by-default variant (``blend_latents: False`` in its
configs): after steps ``int(0.2 N) .. int(0.8 N) - 2`` (its ``start_blend``, ``end_blend`` and
counter), ``x = x_src + mask * (x - x_src)``, the mask the union of the source words' (stored
maps of this step) and the ``target_blend_words`` ' (the edit's maps summed over the steps so
far), and ``x_src`` the inversion's latent at step i's timestep, one step noisier than ``x`` (the
reference's ``latents_store[len - cur_step]``, read after ``cur_step`` is incremented; followed as is).

Defaults: the edit entries (``p2p_config[1]``) of the zero-shot configs, e.g. ``config/style/
jeep_watercolor.yaml``: cross 0.8, self 0.8, refinement, no blend words; its source entry's
self 0.9 (``p2p_config[0]``) is for reconstructing the source. The anchors are the inversion's
options (``anchor``, ``min_channels``), read from its record, so the edit cannot attend otherwise
than the stored maps did; the ``cross_frame`` module's mode ``mid`` is the same anchor for other
editors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import torch

from videdit.attention import AttentionModule, compose, layer_grids
from videdit.attention.stored import MAPS, StoredAttention, anchors
from videdit.core.loop import Branches, CallInfo, StepCallback, StepContext
from videdit.editing.control import (auto_map_factor, check_fraction, check_map_factor, cross_layers_at, cross_window,
                                     step_window, word_scales)
from videdit.editing.prompt_to_prompt import GridStore, MapEdit, blend_mask, map_edit, same_word_count, word_maps
from videdit.editing.registry import EditContext, EditPlan, register_editor
from videdit.editing.words import find_word, prompt_words
from videdit.errors import VideditError
from videdit.registry import NOT_INSTRUCT
from videdit.video.cross_frame import fixed_anchors

EDITOR = "fatezero"
log = logging.getLogger("videdit.editing")
MODES = ("refine", "replace")


@dataclass(frozen=True)
class FateZeroConfig:
    mode: str = "refine"               # refine | replace (is_replace_controller; refine where the word counts differ)
    cross_replace: float = 0.8         # cross-attention fused for this fraction of steps + 1 (cross_replace_steps)
    self_replace: float = 0.8          # self-attention fused for this fraction of the steps (self_replace_steps)
    reweight: Mapping[str, float] | None = None   # eq_params: {word of the target prompt: attention scale}
    blend_words: tuple[str, ...] = ()  # words of the source prompt whose stored maps give the blend mask
    target_blend_words: tuple[str, ...] = ()   # words of the target prompt, for blend_latents
    blend_threshold: float = 0.3       # blend_th
    blend_self_attention: bool = True  # the mask blends self-attention maps (with blend_words)
    blend_latents: bool = False        # the mask blends latents with the inversion's (the reference's variant)
    blend_factor: int = 0              # mask from the cross-attention at 1/factor of the latents; 0: auto (16x16)
    max_tokens: int = 32 ** 2          # fuse on layers of at most this many query tokens (32x32)

    def __post_init__(self):
        if self.mode not in MODES:
            raise VideditError(f"{EDITOR} mode must be one of {MODES}, got {self.mode!r}")
        for name in ("cross_replace", "self_replace"):
            check_fraction(EDITOR, name, getattr(self, name))
        reweight = word_scales(EDITOR, self.reweight, "{'watercolor': 10}")
        object.__setattr__(self, "reweight", reweight)
        for name in ("blend_words", "target_blend_words"):
            value = getattr(self, name)
            words = (value,) if isinstance(value, str) else tuple(value)
            if not all(isinstance(w, str) and w.strip() for w in words):
                raise VideditError(f"{EDITOR} {name} must be words of the prompt, got {value!r}")
            object.__setattr__(self, name, words)
        if not 0 <= self.blend_threshold <= 1:
            raise VideditError(f"{EDITOR} blend_threshold must be in [0, 1], got {self.blend_threshold}")
        for name in ("blend_self_attention", "blend_latents"):
            if not isinstance(getattr(self, name), bool):
                raise VideditError(f"{EDITOR} {name} must be true or false, got {getattr(self, name)!r}")
        if self.target_blend_words and not self.blend_latents:
            raise VideditError(f"{EDITOR} target_blend_words only shape the latent blend: set blend_latents=true")
        check_map_factor(self.blend_factor, EDITOR, "blend_factor")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise VideditError(f"{EDITOR} max_tokens must be an int >= 1 (1024 = 32x32), got {self.max_tokens!r}")


def word_mask(maps: torch.Tensor, grid: tuple[int, int], threshold: float) -> torch.Tensor:
    """``SpatialBlender.get_mask``: maps (F, k, h, w) of k tokens, already averaged over
    layers and heads -> (F, 1, *grid) float in {0, 1} (:func:`blend_mask`: summed over the
    tokens, 3x3 max-pooled, nearest-resized, divided by the maximum, > threshold)."""
    return blend_mask(maps, grid, threshold, radius=1)


class SourceWordMaps:
    """The stored cross-attention of the source prompt's blend words on the blend layers:
    :meth:`at` -> (fb, k, h, w), averaged over layers and heads."""

    def __init__(self, stored: StoredAttention, layers: list[str], positions: list[int], grid: tuple[int, int]):
        self.stored, self.layers, self.positions, self.grid = stored, layers, positions, grid

    def at(self, step: int, frames: list[int]) -> torch.Tensor:
        parts = [self.stored.extras[MAPS + n][step, frames][..., self.positions].float().mean(1) for n in self.layers]
        m = torch.stack(parts).mean(0)                                      # (fb, T, k)
        return m.transpose(-1, -2).unflatten(-1, self.grid)                 # (fb, k, h, w)


class FuseCross(AttentionModule):
    """In ``steps``, the conditional cross-attention maps become ``edit(stored maps, own maps)``
    (``AttentionControlEdit.forward``, ``is_cross``, alpha 1 within the steps)."""

    cross = True
    needs_probs = True

    def __init__(self, layers: set[str], steps: range, edit: MapEdit, stored: StoredAttention):
        self.names, self.steps, self.edit, self.stored = frozenset(layers), steps, edit, stored

    def applies(self, layer: str, cross: bool) -> bool:
        return cross and layer in self.names

    def active(self, call) -> bool:
        return not call.info.inverting and call.info.step in self.steps

    def probs_at(self, call) -> bool:
        return self.active(call)

    def probs(self, call, p):
        if not self.active(call):
            return p
        ps = call.split(p)                                                  # (halves, 1, fb, heads, Tq, L)
        base = self.stored.maps(call, list(call.info.frames), p).flatten(0, 1)   # (fb * heads, Tq, L): "hpw"
        mine = ps[-1, 0].flatten(0, 1)[None]                                # (1, fb * heads, Tq, L): "bhpn"
        ps[-1, 0] = self.edit(base, mine)[0].view_as(ps[-1, 0])
        return p


class FuseSelf(AttentionModule):
    """In ``steps``, the conditional self-attention maps become the stored ones
    (``replace_self_attention``), or ``mask * own + (1 - mask) * stored`` with a blend mask."""

    cross = False
    needs_probs = True

    def __init__(self, layers: set[str], steps: range, stored: StoredAttention, words: SourceWordMaps | None,
                 threshold: float):
        self.names, self.steps, self.stored = frozenset(layers), steps, stored
        self.words, self.threshold = words, threshold

    def applies(self, layer: str, cross: bool) -> bool:
        return not cross and layer in self.names

    def active(self, call) -> bool:
        return not call.info.inverting and call.info.step in self.steps

    def probs_at(self, call) -> bool:
        return self.active(call)

    def probs(self, call, p):
        if not self.active(call):
            return p
        frames = list(call.info.frames)
        ps = call.split(p)                                                  # (halves, 1, fb, heads, Tq, Tk)
        base = self.stored.maps(call, frames, p)                            # (fb, heads, Tq, Tk')
        if base.shape[-1] != ps.shape[-1]:
            raise VideditError(f"{EDITOR}: the inversion's self-attention at {call.layer} attends over "
                               f"{base.shape[-1]} keys and the edit's over {ps.shape[-1]}: drop the temporal "
                               f"modules that change self-attention (cross_frame, keyframes; the fatezero editor "
                               f"runs the anchors the inversion ran)")
        if self.words is None:
            ps[-1, 0] = base
        else:
            mask = word_mask(self.words.at(call.info.step, frames), call.spatial(), self.threshold)   # (fb, 1, h, w)
            mask = mask.flatten(1)[:, None, :, None].to(p)                  # (fb, 1, Tq, 1): 1 keeps the edit's own
            ps[-1, 0] = mask * ps[-1, 0] + (1 - mask) * base
        return p


class LatentBlend(StepCallback):
    """``SpatialBlender(prompt_choose='both')`` on the latents, after the steps in ``steps``."""

    def __init__(self, source: SourceWordMaps, target: GridStore | None, trajectory: torch.Tensor, steps: range,
                 threshold: float):
        self.source, self.target, self.trajectory = source, target, trajectory
        self.steps, self.threshold = steps, threshold

    def on_step_end(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        if ctx.step not in self.steps:
            return x
        frames, latent = list(range(x.shape[1])), tuple(x.shape[-2:])
        mask = word_mask(self.source.at(ctx.step, frames), latent, self.threshold)        # (F, 1, h, w)
        if self.target is not None and self.target.total is not None:
            mask = torch.maximum(mask, word_mask(self.target.maps()[0], latent, self.threshold))
        src = self.trajectory[ctx.step].to(x)[None]                         # the reference's latents_store index
        return src + mask.to(x) * (x - src)


def _positions(tokens: list[str], prompt: str, words: tuple[str, ...], which: str) -> list[int]:
    out = []
    for word in words:
        found = find_word(tokens, word)
        if not found:
            raise VideditError(f"{EDITOR} {which} word {word!r} is not in the prompt {prompt!r}, whose words are "
                               f"{[w for w, _ in prompt_words(tokens)]}")
        out += found
    return sorted(set(out))


@register_editor(EDITOR, FateZeroConfig, steps=50, guidance=7.5, reads=("attention",), inversion="fatezero",
                 models={"families": ("SD1", "SD2"), "refuses": {**NOT_INSTRUCT, "SDXL": (
                     "its stored cross-attention maps index SD 1.x/2.x's 77 text tokens; not mapped to SDXL's "
                     "packed text yet")}},
                 reference="Qi et al., ICCV 2023; github.com/ChenyangQiQi/FateZero (prompt_attention/"
                           "attention_util.py, spatial_blend.py; config/style/*.yaml p2p_config[1])")
def fatezero(ctx: EditContext, config: FateZeroConfig) -> EditPlan:
    """FateZero (Qi et al. 2023): attention fusion of the maps stored while inverting, one branch."""
    stored = StoredAttention(ctx.inversion.extras)
    kept = stored.layers()
    if not kept:
        raise VideditError(f"{EDITOR} fuses the attention maps stored while inverting, and this "
                           f"{ctx.inversion.method!r} inversion holds none: use --inversion fatezero")
    src, tgt = ctx.model.tokens(ctx.source_prompt), ctx.model.tokens(ctx.target_prompt)
    max_len = ctx.source_cond.shape[-2]
    mode = config.mode
    if mode == "replace" and not same_word_count(ctx.source_prompt, ctx.target_prompt):
        mode = "refine"   # p2preplace_edit: is_replace_controller and equal_length (of words)
        log.info("%s: the prompts have %d and %d words, so the word swap is a refinement (as FateZero's)", EDITOR,
                 len(ctx.source_prompt.split()), len(ctx.target_prompt.split()))
    mapper, alphas, equalizer = word_maps(mode, ctx.model, (ctx.source_prompt, ctx.target_prompt), (src, tgt),
                                          config.reweight, max_len)
    n = len(ctx.schedule)
    x = ctx.inversion.noise[None]                                           # (1, F, C, h, w)
    latent = tuple(x.shape[-2:])
    grids = layer_grids(ctx.model.unet, latent)
    fused = {name for name in kept if name in grids and grids[name][0] * grids[name][1] <= config.max_tokens}
    words = None
    modules: list[AttentionModule] = []
    callbacks: list[StepCallback] = []
    if config.blend_words:
        factor = config.blend_factor or auto_map_factor(latent)
        layers = cross_layers_at(ctx.model.unet, latent, factor, EDITOR, "blend_factor")
        missing = [name for name in layers if name not in kept]
        if missing:
            raise VideditError(f"{EDITOR}: the inversion stored no maps of the blend layers {missing}: raise the "
                               f"inversion's max_tokens or the blend_factor")
        words = SourceWordMaps(stored, layers, _positions(src, ctx.source_prompt, config.blend_words, "blend"),
                               grids[layers[0]])
        if config.blend_latents:
            target = None
            if config.target_blend_words:
                target = GridStore(_positions(tgt, ctx.target_prompt, config.target_blend_words, "target blend"),
                                   x.shape[1], layers)
                modules.append(target)   # before the fusion: the edit's maps as computed, as the reference stores them
            callbacks.append(LatentBlend(words, target, ctx.inversion.trajectory,
                                         range(int(0.2 * n), int(0.8 * n) - 1), config.blend_threshold))
    cross = {name for name in fused if name.endswith("attn2.processor")}
    cross_steps = cross_window(config.cross_replace, n)
    if cross and len(cross_steps):
        modules.append(FuseCross(cross, cross_steps, map_edit(mode, mapper, alphas, equalizer), stored))
    selfs = fused - cross
    self_steps = step_window(0, config.self_replace, n)
    if selfs and len(self_steps):
        modules.append(FuseSelf(selfs, self_steps, stored, words if config.blend_self_attention else None,
                                config.blend_threshold))
    info = CallInfo()
    anchored, anchor = anchors(ctx.inversion.extras)
    if anchored:   # FateZero's UNet, as the inversion ran it
        module, info.lead_frames = fixed_anchors(anchored, anchor, what=EDITOR)
        modules.insert(0, module)
    return EditPlan(x=x, branches=Branches(cond=ctx.target_cond, uncond=ctx.uncond, guidance=(ctx.guidance,)),
                    callbacks=callbacks, processors=compose(ctx.model.unet, modules, info), info=info)
