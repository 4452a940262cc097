"""pix2pix-zero's editing half: an edit direction in text-embedding space and cross-attention
guidance (Parmar et al. 2023, "Zero-shot Image-to-Image Translation", SIGGRAPH, Sec. 3).

Edit direction (``src/utils/edit_directions.py`` ``construct_direction``, ``src/make_edit_direction.py``):
two sets of sentences, one about the source concept ("a cat ...") and one about the target
("a dog ..."), are embedded with the model's own text encoder; the direction is

    Delta c = mean_j E(target_j) - mean_i E(source_i)      (1, L, D), every token position,

and the edit's prompt embedding is c_edit = E(source prompt) + Delta c. The sentences come
from files (one a line, or the ``.pt`` mean embedding ``make_edit_direction.py`` saves), from
lists, from the name of a pair of sets shipped for the toy world (``red2blue``:
``videdit/toy/directions/red.txt`` -> ``blue.txt``), or, when none is given, they are the
source and the target prompt themselves. With sentences the target prompt must be empty or the
source prompt (it would be ignored).

Cross-attention guidance (``src/utils/edit_pipeline.py`` ``EditingPipeline.__call__``, which
diffusers' ``StableDiffusionPix2PixZeroPipeline.__call__`` repeats): a reconstruction pass
under the source prompt gives reference cross-attention maps M^ref_t; at each step of the
edit, the latents of both classifier-free-guidance halves -- the negative prompt, which
``edit_real.py`` sets to the source prompt, and c_edit -- are moved by one SGD step of size
``xa_guidance`` on

    L = sum_layers sum_heads,halves || M_t(x_t, c) - M^ref_t ||^2 / (2 heads)     (every attn2 layer)

each half by the gradient of its own maps, and the noise is predicted again at the moved
latents: eps = eps(x_t^neg, c_src) + w (eps(x_t^edit, c_edit) - eps(x_t^neg, c_src)), w = 5
(``--negative_guidance_scale``); the step continues from x_t^neg, the negative half's latents
(``x_in.chunk(2)[0]``).

Layout: three branches denoised together from the inverted noise, all at guidance 1 (the
CFG above is taken by this editor's step callback):

    REC  (0): the reconstruction, source prompt; its maps are M^ref (the source branch)
    NEG  (1): the negative half, source prompt; its latents are the edit (the output branch)
    EDIT (2): the c_edit half; set to NEG's latents before each step's guidance

The reference maps are those of the REC rows of the same UNet call (detached), so nothing is
stored from step to step; the official code records them in a first full pass. The guidance
step backpropagates through the UNet for every frame of the window at once (the UNet's
weights take no gradient); lower the window (``--window``) where memory runs short.
``--source-branch pinned`` computes M^ref on the stored inversion latents instead of the
reconstruction's. The edit's negative prompt is the source prompt, as in ``edit_real.py``:
the ``negative_prompt`` setting is not read, and an inversion's per-step unconditional
embeddings (null-text) have no guided branch to act in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from videdit.attention import AttentionModule, AttnCall, compose
from videdit.core.guidance import cfg
from videdit.core.loop import Branches, CallInfo, StepCallback, StepContext, predict_noise
from videdit.editing.registry import EditContext, EditPlan, register_editor
from videdit.errors import VideditError

EDITOR = "pix2pix_zero"
REC, NEG, EDIT = 0, 1, 2
DIRECTIONS = Path(__file__).resolve().parents[1] / "toy" / "directions"   # the toy world's sentence files


@dataclass(frozen=True)
class Pix2PixZeroEditConfig:
    direction: str | None = None    # "red2blue": the sentence files shipped for the toy world (DIRECTIONS)
    # the source and target concept's sentences: a .txt file (one a line), a .pt of their embeddings,
    # or a list; none of these: the source and the target prompt
    source_sentences: str | tuple[str, ...] | None = None
    target_sentences: str | tuple[str, ...] | None = None
    xa_guidance: float = 0.1         # SGD step size of the cross-attention guidance (edit_real.py --xa_guidance)

    def __post_init__(self):
        given = (self.source_sentences is not None, self.target_sentences is not None)
        if given[0] != given[1]:
            raise VideditError(f"{EDITOR} needs both source_sentences and target_sentences, or neither")
        if self.direction is not None:
            if given[0]:
                raise VideditError(f"{EDITOR} takes a direction name or source/target sentences, not both")
            direction_files(self.direction)
        for name in ("source_sentences", "target_sentences"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                if not value or not all(isinstance(s, str) for s in value):
                    raise VideditError(f"{EDITOR} {name} must be a file or a non-empty list of sentences, "
                                       f"got {value!r}")
                object.__setattr__(self, name, tuple(value))
            elif value is not None:
                path = Path(value)
                if path.suffix not in (".txt", ".pt") or not path.is_file():
                    raise VideditError(f"{EDITOR} {name}: {value} is not a .txt file of sentences (one a line) "
                                       f"or a .pt of their embeddings")
                object.__setattr__(self, name, str(value))
        if not isinstance(self.xa_guidance, (int, float)) or not 0 <= self.xa_guidance <= 10:
            raise VideditError(f"{EDITOR} xa_guidance must be a step size in [0, 10] (0: no guidance), "
                               f"got {self.xa_guidance!r}")


def direction_files(name: str) -> tuple[Path, Path]:
    """``"red2blue"`` -> the shipped sentence files (red.txt, blue.txt), split at the "2" as
    ``construct_direction`` splits its task name."""
    shipped = sorted(p.stem for p in DIRECTIONS.glob("*.txt"))
    parts = name.split("2") if isinstance(name, str) else []
    if len(parts) != 2 or not all(p in shipped for p in parts):
        raise VideditError(f"{EDITOR} direction {name!r} is not SOURCE2TARGET of the shipped sentence sets "
                           f"{shipped} (e.g. 'red2blue'); for other concepts give source_sentences and "
                           f"target_sentences files")
    return DIRECTIONS / f"{parts[0]}.txt", DIRECTIONS / f"{parts[1]}.txt"


def read_sentences(path: str | Path) -> list[str]:
    """A file's sentences, one a line (blank lines skipped)."""
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    sentences = [line for line in lines if line]
    if not sentences:
        raise VideditError(f"{EDITOR}: {path} holds no sentences")
    return sentences


def mean_embedding(model, sentences: str | Path | Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """The mean text embedding (1, L, D), float32, of a list of sentences or of a sentence
    file; a ``.pt`` file holds embeddings (n, L, D) or (L, D) already (``make_edit_direction.py``
    saves their mean, (1, L, D)). Sentences are encoded ``batch_size`` at a time, padded to
    the tokenizer's length, as ``StableDiffusionPix2PixZeroPipeline.get_embeds`` does; SDXL's one at
    a time by ``Model.encode_text`` (its pooled row averaged with the rest)."""
    if isinstance(sentences, (str, Path)) and Path(sentences).suffix == ".pt":
        embeds = torch.load(sentences, map_location="cpu", weights_only=True)
        if not isinstance(embeds, torch.Tensor) or embeds.ndim not in (2, 3):
            raise VideditError(f"{EDITOR}: {sentences} must hold one tensor of embeddings (n, L, D) or (L, D)")
        embeds = embeds.reshape(-1, *embeds.shape[-2:]).float()
    else:
        texts = read_sentences(sentences) if isinstance(sentences, (str, Path)) else list(sentences)
        if model.text_encoder_2 is not None:   # SDXL: both encoders and the pooled row, as its prompts are
            embeds = model.encode_text(texts, remember=False).float()
        else:
            tok, encoder = model.tokenizer, model.text_encoder
            embeds = []
            with torch.no_grad():
                for i in range(0, len(texts), batch_size):
                    ids = tok(texts[i:i + batch_size], padding="max_length", truncation=True,
                              max_length=tok.model_max_length, return_tensors="pt").input_ids
                    embeds.append(encoder(ids.to(encoder.device))[0].float())   # (b, L, D)
            embeds = torch.cat(embeds)
    return embeds.mean(0, keepdim=True)


def edit_direction(ctx: EditContext, config: Pix2PixZeroEditConfig) -> torch.Tensor:
    """Delta c (1, L, D) = mean target embedding - mean source embedding, on the prompts' device and dtype."""
    if config.direction is None and config.source_sentences is None:   # the prompts themselves: one sentence each
        return ctx.target_cond - ctx.source_cond
    if ctx.target_prompt not in ("", ctx.source_prompt):
        raise VideditError(f"{EDITOR} edits along its sentences' direction, and the target prompt "
                           f"{ctx.target_prompt!r} would be ignored: give the source prompt as the target, or "
                           f"leave the sentences out to edit from the source prompt to the target prompt")
    if config.direction is not None:
        source, target = direction_files(config.direction)
    else:
        source, target = config.source_sentences, config.target_sentences
    direction = mean_embedding(ctx.model, target) - mean_embedding(ctx.model, source)
    if direction.shape[1:] != ctx.source_cond.shape[1:]:
        raise VideditError(f"{EDITOR}: the direction's embeddings are {tuple(direction.shape[1:])} and this "
                           f"model's text encoder gives {tuple(ctx.source_cond.shape[1:])}; embed the sentences "
                           f"with this model")
    return direction.to(ctx.source_cond)


class CrossAttentionLoss(AttentionModule):
    """While ``loss`` is set (a guidance pass), sums on every cross-attention layer
    ``Pix2PixZeroL2Loss``: the squared difference of the NEG and EDIT rows' probabilities
    to the REC rows' (detached), summed over query and key tokens, averaged over heads and
    the two halves, summed over frames (each frame is an image of its own). Outside such a
    pass the layers stay on fused attention."""

    cross = True

    def __init__(self):
        self.loss: torch.Tensor | None = None

    @property
    def needs_probs(self) -> bool:
        return self.loss is not None

    def probs(self, call: AttnCall, p: torch.Tensor) -> torch.Tensor:
        if self.loss is None:
            return p
        m = call.split(p)[0].float()                     # (nb, fb, heads, Tq, Tk): one (unguided) half
        ref = m[REC].detach()
        self.loss = self.loss + (m[[NEG, EDIT]] - ref).square().sum() / (2 * call.heads)
        return p


class CrossAttentionGuidance(StepCallback):
    """Before each step, the NEG and EDIT latents move down the gradient of their cross-
    attention loss (one SGD step of ``lr``); after the model call both take the guided noise
    eps_NEG + w (eps_EDIT - eps_NEG), so NEG steps as the official sample does."""

    def __init__(self, unet, cond: torch.Tensor, loss: CrossAttentionLoss, info: CallInfo, lr: float,
                 guidance: float, batch_size: int):
        self.unet, self.cond, self.module, self.info = unet, cond, loss, info
        self.lr, self.guidance, self.batch_size = lr, guidance, batch_size

    def loss_and_grad(self, ctx: StepContext, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-attention loss at latents x (3, F, C, h, w) and its gradient for the NEG and
        EDIT latents (2, F, C, h, w)."""
        with torch.enable_grad():
            moving = x[[NEG, EDIT]].detach().requires_grad_(True)
            z = torch.cat([x[REC:REC + 1].detach(), moving])        # (3, F, C, h, w)
            self.module.loss = z.new_zeros(())
            try:
                predict_noise(self.unet, z, ctx.timestep, self.cond, None, (1.0, 1.0, 1.0),
                              batch_size=self.batch_size, info=self.info)
                loss = self.module.loss
            finally:
                self.module.loss = None
            if not loss.requires_grad:   # a model without cross-attention layers
                return loss.detach(), torch.zeros_like(moving)
            (grad,) = torch.autograd.grad(loss, moving)
        return loss.detach(), grad

    def on_step_start(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[EDIT] = x[NEG]
        if self.lr > 0:
            _, grad = self.loss_and_grad(ctx, x)
            x[[NEG, EDIT]] = x[[NEG, EDIT]] - self.lr * grad
        return x

    def on_noise(self, ctx: StepContext, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[NEG] = out[EDIT] = cfg(out[NEG], out[EDIT], self.guidance)
        return out


@register_editor(EDITOR, Pix2PixZeroEditConfig, source_branch=True, steps=50, guidance=5.0,
                 reference="Parmar et al. 2023, Zero-shot Image-to-Image Translation; "
                           "github.com/pix2pixzero/pix2pix-zero src/edit_real.py, src/utils/edit_pipeline.py")
def pix2pix_zero(ctx: EditContext, config: Pix2PixZeroEditConfig) -> EditPlan:
    """pix2pix-zero (Parmar et al. 2023): a text-embedding edit direction with cross-attention guidance."""
    direction = edit_direction(ctx, config)
    src = ctx.source_cond
    cond = torch.cat([src, src, src + direction])                    # (3, L, D): REC, NEG, EDIT
    x = ctx.inversion.noise[None].repeat(3, 1, 1, 1, 1)              # (3, F, C, h, w)
    info = CallInfo()
    loss = CrossAttentionLoss()
    guidance = CrossAttentionGuidance(ctx.model.unet, cond, loss, info, float(config.xa_guidance), ctx.guidance,
                                      ctx.batch_size)
    # every branch unguided: the callback takes the CFG of NEG and EDIT (no uncond is ever computed)
    branches = Branches(cond=cond, uncond=ctx.uncond.expand(3, *ctx.uncond.shape[1:]), guidance=(1.0, 1.0, 1.0))
    return EditPlan(x=x, branches=branches, callbacks=[guidance], processors=compose(ctx.model.unet, [loss], info),
                    info=info, output_branch=NEG, source_branch=REC)
