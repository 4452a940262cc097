"""Prompt-to-Prompt: edit by injecting the source's cross-attention maps (Hertz et al. 2023).

"Prompt-to-Prompt Image Editing with Cross-Attention Control", ICLR 2023, Sec. 3.2. Two
branches are denoised side by side from the same noise: the source prompt P (branch 0,
which replays the source) and the target prompt P* (branch 1, the edit). In the target's
conditional half, for the first ``cross_replace`` of the steps, its cross-attention maps
M*_t are replaced by an edit of the source's M_t:

* word swap (``replace``):   Edit(M_t, M*_t, t) = M_t                  (P and P* of as many words; a
                             word's map spread over a replacement of more tokens: ``replacement_mapper``)
* refinement (``refine``):   (Edit)_{i,j} = (M*_t)_{i,j} if A(j) = None else (M_t)_{i,A(j)},
                             A aligning P*'s tokens with P's (``refinement_mapper``)
* re-weighting (``reweight``): (Edit)_{i,j} = c * (M_t)_{i,j} for the chosen words j, else M_t

(the default is refinement, as the PIE-Bench code's ``is_replace_controller=False``; ``auto``,
videdit's option, swaps when the prompts have as many words, else refines;
``reweight`` may also ride on top of a swap or a refinement, as the reference code's
``prev_controller`` does). For the first ``self_replace`` of the steps, the target's
self-attention maps are the source's in layers of at most ``self_replace_max_tokens`` query
tokens (``AttentionControlEdit.replace_self_attention``: ``att_replace.shape[2] <= 32 ** 2``
in the null-text notebook and the PIE-Bench code, i.e. SD's 32x32, 16x16 and 8x8 layers at
512 px; a count of tokens, so on SDXL at 1024 px its 32x32 layers, not its 64x64 ones). Local
blending (Sec. 3.2, "Local editing") keeps the latents outside the edited words' attention, as
``LocalBlend`` does: the cross-attention maps of ``blend_words`` in the layers at
1/``blend_factor`` of the latents (SD's 16x16 layers), summed over the steps so far
and over the words' tokens, averaged over layers and heads, max-pooled over 3x3 cells of
their grid (``blend_dilate`` = 1), upsampled to the latents by nearest neighbour, divided by
their maximum and thresholded at ``blend_threshold``; the source words' mask (from the source
branch) and the target words' (from the target) are joined, and after each step from
``blend_start`` on the edit becomes ``x_src + mask * (x_edit - x_src)``.

Defaults follow github.com/google/prompt-to-prompt (``ptp_utils.py``, ``seq_aligner.py``,
``prompt-to-prompt_stable.ipynb``: cross 0.8 and self 0.4 of its examples,
``null_text_w_ptp.ipynb``) and the PIE-Bench code, github.com/cure-lab/PnPInversion
(``models/p2p/attention_control.py``, ``models/p2p_editor.py``, ``run_editing_p2p.py``), which
edits the conditional half only (``LOW_RESOURCE = False``), as here. The attention math
follows ``AttentionReplace``, ``AttentionRefine``, ``AttentionReweight``, ``LocalBlend``,
``seq_aligner.get_refinement_mapper`` and ``get_replacement_mapper``; see the pure functions
below. Deviations: the reference's per-word ``cross_replace_steps`` dict is one fraction
here; prompts are split into words at any whitespace (the reference splits at single spaces);
``blend_words`` is one list of words looked up in both prompts (the reference takes one list
per prompt).
Self-attention replacement is done by handing the target the source's queries and keys,
which gives exactly the source's maps with fused attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from videdit.attention import AttentionModule, compose, layer_grids
from videdit.core.loop import CallInfo, StepCallback, StepContext
from videdit.editing.control import (SOURCE, TARGET, InjectQKV, LayerStore, auto_map_factor, check_fraction,
                                     check_map_factor, cross_layers_at, cross_window, step_index, step_window,
                                     two_branches, word_scales)
from videdit.editing.registry import EditContext, EditPlan, register_editor
from videdit.editing.words import find_word, prompt_words, word_positions
from videdit.errors import VideditError
from videdit.masks import dilate_mask
from videdit.registry import improved

MODES = ("auto", "replace", "refine", "reweight")
EDITOR = "prompt_to_prompt"


@dataclass(frozen=True)
class PromptToPromptConfig:
    # refine | replace (word swap) | reweight | auto (replace where the prompts have as many words, else refine)
    mode: str = improved("refine", better="auto", why="the changed word takes the source word's map when the "
                         "prompts have as many words: toy-edits (6 scenes, 25 steps, guidance 4), colour-edit IoU "
                         "0.54 vs 0.49 (direct) and 0.48 (ddim), background PSNR 0.3-1.0 dB higher, all edits made")
    cross_replace: float = 0.8         # cross-attention edited for this fraction of the steps (of steps + 1)
    self_replace: float = 0.4          # self-attention maps taken from the source for this fraction ...
    self_replace_max_tokens: int = 32 ** 2  # ... in layers of at most this many tokens (32x32 in SD at 512 px)
    reweight: Mapping[str, float] | None = None  # {word of the target prompt: attention scale}
    blend_words: tuple[str, ...] = ()  # local blend: words of the source and/or target prompt
    blend_threshold: float = 0.3       # mask = max-normalised attention > this
    blend_start: float = 0.2           # blend after each step from this fraction of the steps
    blend_factor: int = 0              # maps from the layers at 1/factor of the latents; 0: auto (about 16x16)
    blend_dilate: int = 1              # max-pool radius in cells of that grid (1: the reference's 3x3)

    def __post_init__(self):
        if self.mode not in MODES:
            raise VideditError(f"{EDITOR} mode must be one of {MODES}, got {self.mode!r}")
        for name in ("cross_replace", "self_replace", "blend_start"):
            check_fraction(EDITOR, name, getattr(self, name))
        if not isinstance(self.self_replace_max_tokens, int) or self.self_replace_max_tokens < 0:
            raise VideditError(f"{EDITOR} self_replace_max_tokens must be an int >= 0 (1024 = 32x32), "
                               f"got {self.self_replace_max_tokens!r}")
        reweight = word_scales(EDITOR, self.reweight, "{'watercolor': 5}")
        object.__setattr__(self, "reweight", reweight)
        if self.mode == "reweight" and not reweight:
            raise VideditError(f"{EDITOR} mode 'reweight' needs reweight={{word: scale}}, e.g. --reweight snowy=2")
        words = (self.blend_words,) if isinstance(self.blend_words, str) else tuple(self.blend_words)
        if not all(isinstance(w, str) and w.strip() for w in words):
            raise VideditError(f"{EDITOR} blend_words must be words of the prompts, got {self.blend_words!r}")
        object.__setattr__(self, "blend_words", words)
        if not 0 <= self.blend_threshold <= 1:
            raise VideditError(f"{EDITOR} blend_threshold must be in [0, 1], got {self.blend_threshold}")
        check_map_factor(self.blend_factor, EDITOR, "blend_factor")
        if not isinstance(self.blend_dilate, int) or self.blend_dilate < 0:
            raise VideditError(f"{EDITOR} blend_dilate must be an int >= 0, got {self.blend_dilate!r}")


# ---- the attention math, in the reference code's shapes: h heads (x frames), p pixels, w / n tokens ----

def refine_cross_attention(attn_base: torch.Tensor, attn_replace: torch.Tensor, mapper: torch.Tensor,
                           alphas: torch.Tensor) -> torch.Tensor:
    """Refinement, ``AttentionRefine.replace_cross_attention``: target token n takes the
    source's map of token ``mapper[b, n]`` where ``alphas[b, n]`` is 1 and keeps its own where
    it is 0. attn_base (h, p, w), attn_replace (b, h, p, n), mapper (b, n) int, alphas (b, n)."""
    base = attn_base[:, :, mapper].permute(2, 0, 1, 3)               # (b, h, p, n)
    a = alphas.reshape(alphas.shape[0], 1, 1, alphas.shape[1])       # (b, 1, 1, n)
    return base * a + attn_replace * (1 - a)


def reweight_cross_attention(attn_base: torch.Tensor, equalizer: torch.Tensor) -> torch.Tensor:
    """Re-weighting, ``AttentionReweight.replace_cross_attention``: (h, p, n) maps (after the
    previous controller, if any) scaled per token by ``equalizer`` (b, n) -> (b, h, p, n)."""
    return attn_base[None, :, :, :] * equalizer[:, None, None, :]


def refinement_mapper(source: Sequence, target: Sequence, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``seq_aligner.get_mapper``: globally align the token sequences (Needleman-Wunsch, gap
    0, match 1, mismatch -1, ties broken as the reference does) -> mapper (max_len,) from each
    target position to its source position, and alphas (max_len,): 0 where the target token
    has no source counterpart. Positions past the target map to themselves."""
    nx, ny = len(source), len(target)
    if ny > max_len:
        raise VideditError(f"the target prompt has {ny} tokens, more than the text encoder's {max_len}")
    score = [[0] * (ny + 1) for _ in range(nx + 1)]
    trace = [[0] * (ny + 1) for _ in range(nx + 1)]
    for j in range(1, ny + 1):
        trace[0][j] = 1
    for i in range(1, nx + 1):
        trace[i][0] = 2
    trace[0][0] = 4
    for i in range(1, nx + 1):
        for j in range(1, ny + 1):
            left, up = score[i][j - 1], score[i - 1][j]   # gap 0
            diag = score[i - 1][j - 1] + (1 if source[i - 1] == target[j - 1] else -1)
            score[i][j] = best = max(left, up, diag)
            trace[i][j] = 1 if best == left else 2 if best == up else 3
    pairs, i, j = [], nx, ny   # (target position, source position or -1)
    while i > 0 or j > 0:
        move = trace[i][j]
        if move == 3:
            i, j = i - 1, j - 1
            pairs.append((j, i))
        elif move == 1:
            j -= 1
            pairs.append((j, -1))
        elif move == 2:
            i -= 1
        else:
            break
    pairs.reverse()
    base = torch.tensor(pairs, dtype=torch.int64).view(-1, 2)
    alphas = torch.ones(max_len)
    alphas[:len(base)] = base[:, 1].ne(-1).float()
    mapper = torch.zeros(max_len, dtype=torch.int64)
    mapper[:len(base)] = base[:, 1]
    mapper[len(base):] = ny + torch.arange(max_len - ny)
    return mapper, alphas


def replacement_mapper(source: Sequence[tuple[str, list[int]]], target: Sequence[tuple[str, list[int]]],
                       max_len: int) -> torch.Tensor | None:
    """``seq_aligner.get_replacement_mapper`` for a word swap: the prompts' words (split at spaces,
    with their token positions: ``Model.spaced_words``) -> mapper (max_len, max_len), the target's
    token n taking ``sum_w M[w] mapper[w, n]`` of the source's maps; None where that is the identity
    (every swapped word of as many tokens as its replacement). A swapped word's attention is spread
    evenly over a replacement of more tokens (``ratio = 1 / len(inds_target)``), and a replacement of
    fewer tokens takes the sum of the word's. As the reference does, the tokens after the last swap
    take the source's at their own index (``mapper[j, j]``), so a swap of unequal token counts shifts
    them against the source by the difference, and where the source runs out first (a replacement of
    fewer tokens) the last columns stay zero."""
    if len(source) != len(target):
        raise VideditError(f"{EDITOR} word swap needs prompts of as many words, but the source has {len(source)} and "
                           f"the target {len(target)}; use mode 'refine' (refinement: aligns the tokens) or 'auto'")
    swaps = [(s, t) for (ws, s), (wt, t) in zip(source, target) if ws != wt]
    for (ws, s), (wt, t) in zip(source, target):
        if ws != wt and not (s and t):
            raise VideditError(f"{EDITOR} word swap {ws!r} -> {wt!r} lies past the text encoder's {max_len} tokens; "
                               f"shorten the prompts")
    mapper = torch.zeros(max_len, max_len)
    i = j = k = 0
    while i < max_len and j < max_len:
        if k < len(swaps) and swaps[k][0][0] == i:
            s, t = (torch.tensor(p) for p in swaps[k])
            if len(s) == len(t):
                mapper[s, t] = 1.0                 # token by token
            else:
                mapper[s[:, None], t] = 1 / len(t)   # every source token to every target token
            i, j, k = i + len(s), j + len(t), k + 1
        else:
            mapper[i if k < len(swaps) else j, j] = 1.0
            i, j = i + 1, j + 1
    return None if torch.equal(mapper, torch.eye(max_len)) else mapper


# ---- the modules ----

# (source maps (h, p, w), target maps (1, h, p, n)) -> edited target maps (1, h, p, n)
MapEdit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def map_edit(mode: str, mapper: torch.Tensor | None, alphas: torch.Tensor | None,
             equalizer: torch.Tensor | None) -> MapEdit:
    """The controller of ``mode`` (refinement with ``mapper`` and ``alphas``; else the word swap,
    ``AttentionReplace``'s einsum('hpw,bwn->bhpn') with the replacement ``mapper``, the source's maps
    themselves where it is None: the identity), then re-weighting."""

    def edit(base: torch.Tensor, mine: torch.Tensor) -> torch.Tensor:
        if mode == "refine":
            new = refine_cross_attention(base, mine, mapper.to(base.device)[None], alphas.to(base)[None])
        elif mapper is not None:
            new = torch.einsum("hpw,wn->hpn", base, mapper.to(base))[None]
        else:
            new = base[None]   # the source's maps (h, p, w) as the target's (1, h, p, n), w == n
        if equalizer is not None:
            new = reweight_cross_attention(new[0], equalizer.to(base)[None])
        return new

    return edit


class CrossAttentionControl(AttentionModule):
    """In ``steps``, the target branch's conditional cross-attention maps become
    ``edit(source maps, its own maps)``, per frame and head (the reference's alpha = 1)."""

    cross = True
    needs_probs = True

    def __init__(self, steps: range, edit: MapEdit):
        self.steps, self.edit = steps, edit

    def active(self, call) -> bool:
        return not call.info.inverting and call.info.step in self.steps

    def probs_at(self, call) -> bool:
        return self.active(call)

    def probs(self, call, p):
        if not self.active(call):
            return p
        ps = call.split(p)                                 # (halves, nb, fb, heads, Tq, L), a view of p
        base = ps[-1, SOURCE].flatten(0, 1)                # (fb * heads, Tq, L): "hpw"
        mine = ps[-1, TARGET].flatten(0, 1)[None]          # (1, fb * heads, Tq, L): "bhpn"
        ps[-1, TARGET] = self.edit(base, mine)[0].view_as(ps[-1, TARGET])
        return p


def blend_mask(maps: torch.Tensor, latent: tuple[int, int], threshold: float, radius: int = 1) -> torch.Tensor:
    """``LocalBlend.get_mask``: cross-attention maps (F, k, h, w) of k tokens at their own
    grid -> (F, 1, *latent) float in {0, 1}: summed over the tokens, max-pooled over
    (2 radius + 1)^2 cells, upsampled by nearest neighbour, divided by the maximum, > threshold."""
    m = maps.float().sum(1, keepdim=True)                              # (F, 1, h, w)
    m = F.interpolate(dilate_mask(m, radius), size=latent, mode="nearest")                  # (F, 1, H, W)
    peak = m.amax(dim=(-2, -1), keepdim=True)
    return (m / peak.clamp(min=torch.finfo(m.dtype).tiny) > threshold).float()


class GridStore(LayerStore):
    """A :class:`LayerStore` that keeps the maps at their layers' own grid (the layers it
    names share one), as the reference's ``AttentionStore`` does, instead of resizing them to
    the latents: :meth:`maps` is (nb, F, k, h, w) at that grid."""

    def probs(self, call, p: torch.Tensor) -> torch.Tensor:
        if call.info.inverting:
            return p
        h, w = call.spatial()
        m = call.split(p.mean(1))[-1][..., self.tokens]           # (nb, fb, T, k): conditional half
        nb, fb = m.shape[:2]
        m = m.transpose(-1, -2).reshape(nb, fb, len(self.tokens), h, w).float()
        if self.total is None:
            self.total = m.new_zeros(nb, self.n_frames, len(self.tokens), h, w)
        frames = list(call.info.frames)
        self.total[:, frames] += m
        self.count[frames] += 1
        return p


class LocalBlend(StepCallback):
    """After each step in ``steps``: target = source + mask * (target - source), the mask
    from the stored cross-attention of the blend words (source words in the source branch,
    target words in the target branch), as the reference's ``LocalBlend``."""

    def __init__(self, store: GridStore, n_source_tokens: int, steps: range, threshold: float, radius: int):
        self.store, self.n_src, self.steps = store, n_source_tokens, steps
        self.threshold, self.radius = threshold, radius

    def mask(self, latent: tuple[int, int]) -> torch.Tensor:
        """(F, 1, *latent) float: the union of the source words' and the target words' masks
        (:func:`blend_mask`; the reference's ``mask[:1] + mask``)."""
        maps = self.store.maps()                                       # (nb, F, k, h, w)
        parts = [maps[SOURCE, :, :self.n_src], maps[TARGET, :, self.n_src:]]   # each (F, k', h, w)
        masks = [blend_mask(m, latent, self.threshold, self.radius) for m in parts if m.shape[1]]
        return torch.stack(masks).amax(0)

    def on_step_end(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        if ctx.step not in self.steps or self.store.total is None:
            return x
        mask = self.mask(tuple(x.shape[-2:])).to(x)                    # (F, 1, h, w)
        x = x.clone()
        x[TARGET] = x[SOURCE] + mask * (x[TARGET] - x[SOURCE])
        return x


def same_word_count(source_prompt: str, target_prompt: str) -> bool:
    """Whether a word swap applies: the prompts have as many words (FateZero's ``equal_length``)."""
    return len(source_prompt.split()) == len(target_prompt.split())


def _mode(config: PromptToPromptConfig, src: list[str], tgt: list[str], source_prompt: str,
          target_prompt: str) -> str:
    """The controller: ``auto`` swaps where the prompts have as many words (FateZero's rule for its
    word swap), else refines; ``reweight`` alone takes the source's maps token by token."""
    if config.mode in ("replace", "reweight") and not source_prompt.strip():
        raise VideditError(f"{EDITOR} mode '{config.mode}' compares the source prompt with the target word by word; "
                           f"give the source prompt (what the clip shows)")
    if config.mode == "auto":
        return "replace" if same_word_count(source_prompt, target_prompt) else "refine"
    if config.mode == "reweight" and len(src) != len(tgt):
        raise VideditError(
            f"{EDITOR} mode 'reweight' alone takes the source's maps token by token and needs prompts of as many "
            f"tokens, but the source has {len(src)} and the target {len(tgt)}; use mode 'refine' or 'replace' with "
            f"reweight")
    return config.mode


def _blend(ctx: EditContext, config: PromptToPromptConfig, src: list[str], tgt: list[str], n_frames: int):
    """The store of the blend words' maps (source positions first) and the blend callback."""
    src_pos, tgt_pos = [], []
    for word in config.blend_words:
        s, t = find_word(src, word), find_word(tgt, word)
        if not s and not t:
            raise VideditError(
                f"{EDITOR} blend word {word!r} is in neither prompt; the source {ctx.source_prompt!r} has the "
                f"words {[w for w, _ in prompt_words(src)]}, the target {ctx.target_prompt!r} "
                f"{[w for w, _ in prompt_words(tgt)]}")
        src_pos += s
        tgt_pos += t
    src_pos, tgt_pos = sorted(set(src_pos)), sorted(set(tgt_pos))
    latent = tuple(ctx.inversion.noise.shape[-2:])
    factor = config.blend_factor or auto_map_factor(latent, unet=ctx.model.unet)
    layers = cross_layers_at(ctx.model.unet, latent, factor, EDITOR, "blend_factor")
    store = GridStore(src_pos + tgt_pos, n_frames, layers)
    n = len(ctx.schedule)
    blend = LocalBlend(store, len(src_pos), range(step_index(config.blend_start, n), n), config.blend_threshold,
                       config.blend_dilate)
    return store, blend


def word_maps(mode: str, model, prompts: tuple[str, str], tokens: tuple[list[str], list[str]],
              reweight: dict[str, float], max_len: int) -> tuple[torch.Tensor | None, torch.Tensor | None,
                                                                 torch.Tensor | None]:
    """The token maps of a cross-attention edit over ``max_len`` text tokens, for the (source, target)
    ``prompts`` and their ``tokens``: for ``mode`` "refine" the refinement mapper and alphas, for
    "replace" the replacement mapper (None: the identity), and for ``reweight`` {word: scale} the
    equaliser (max_len,) (else None)."""
    mapper = alphas = equalizer = None
    (source_prompt, target_prompt), (src, tgt) = prompts, tokens
    if mode == "refine":
        mapper, alphas = refinement_mapper(src, tgt, max_len)
    elif mode == "replace":
        mapper = replacement_mapper(model.spaced_words(source_prompt), model.spaced_words(target_prompt), max_len)
    if reweight:
        equalizer = torch.ones(max_len)
        for word, scale in reweight.items():
            equalizer[word_positions(tgt, word, target_prompt)] = scale
    return mapper, alphas, equalizer


@register_editor(EDITOR, PromptToPromptConfig, source_branch=True, cond_only_source=True,
                 reference="Hertz et al., ICLR 2023; github.com/google/prompt-to-prompt (ptp_utils.py, "
                           "null_text_w_ptp.ipynb); PIE-Bench code, github.com/cure-lab/PnPInversion "
                           "(models/p2p/attention_control.py)")
def prompt_to_prompt(ctx: EditContext, config: PromptToPromptConfig) -> EditPlan:
    """Prompt-to-Prompt (Hertz et al. 2023): word swap, refinement or re-weighting of cross-attention, local blend."""
    src, tgt = ctx.model.tokens(ctx.source_prompt), ctx.model.tokens(ctx.target_prompt)
    max_len = ctx.model.tokenizer.model_max_length   # the tokens cross-attention sees (SDXL: not the pooled row)
    mode = _mode(config, src, tgt, ctx.source_prompt, ctx.target_prompt)
    mapper, alphas, equalizer = word_maps(mode, ctx.model, (ctx.source_prompt, ctx.target_prompt), (src, tgt),
                                          config.reweight, max_len)
    n = len(ctx.schedule)
    x, branches = two_branches(ctx)
    n_frames, latent = x.shape[1], tuple(x.shape[-2:])
    modules: list[AttentionModule] = []
    callbacks: list[StepCallback] = []
    if config.blend_words:
        store, blend = _blend(ctx, config, src, tgt, n_frames)
        modules.append(store)   # before the edit: it records the maps as computed, as the reference does
        callbacks.append(blend)
    cross_steps = cross_window(config.cross_replace, n)
    if len(cross_steps):
        modules.append(CrossAttentionControl(cross_steps, map_edit(mode, mapper, alphas, equalizer)))
    small = [name for name, (h, w) in layer_grids(ctx.model.unet, latent).items()
             if name.endswith("attn1.processor") and h * w <= config.self_replace_max_tokens]
    self_steps = step_window(0, config.self_replace, n)
    if small and len(self_steps):
        modules.append(InjectQKV(small, self_steps, TARGET, q_from=SOURCE, k_from=SOURCE, cond_only=True))
    info = CallInfo()
    return EditPlan(x=x, branches=branches, callbacks=callbacks, processors=compose(ctx.model.unet, modules, info),
                    info=info, output_branch=TARGET, source_branch=SOURCE)
