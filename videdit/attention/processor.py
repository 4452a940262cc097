"""One attention processor per layer, delegating to the modules active on it.

Editors (prompt-to-prompt, MasaCtrl, ...) and video modules (cross-frame attention) are
:class:`AttentionModule` s. :func:`compose` builds a :class:`ComposedProcessor` for every
layer that at least one module wants, so modules stack on the same layer; layers no module
wants keep diffusers' fused processor. A layer computes explicit softmax probabilities only
when one of its modules reads or edits them; otherwise it stays on PyTorch's fused
``scaled_dot_product_attention``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Sequence

import torch
import torch.nn.functional as F

from videdit.core.loop import CallInfo


@dataclass
class AttnCall:
    """The call in flight on one layer: its name, kind, and the batch layout."""

    layer: str
    cross: bool
    info: CallInfo
    heads: int
    tokens: int        # query tokens (h * w for spatial layers)
    scale: float = 0.0  # the layer's softmax scale (attn.scale), for modules that recompute probabilities

    def spatial(self) -> tuple[int, int]:
        """(h, w) of this layer's token grid: the latent size divided by the power of two
        (rounding up, as stride-2 convolutions do) that gives ``tokens``."""
        h, w = self.info.latent_size
        f = 1
        while -(-h // f) * -(-w // f) > self.tokens:
            f *= 2
        if -(-h // f) * -(-w // f) != self.tokens:
            raise ValueError(f"{self.layer}: {self.tokens} tokens do not tile a {h}x{w} latent")
        return -(-h // f), -(-w // f)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) -> (halves, nb, fb, ...): the loop's (guidance half, branch, frame) layout."""
        return x.unflatten(0, (self.info.halves, self.info.n_branches, len(self.info.frames)))


class AttentionModule:
    """An intervention on attention; override what you need. Tensors are per head:
    q/k/v (B, heads, T, d), probabilities (B, heads, Tq, Tk)."""

    layers: str = "*"            # glob over processor names
    cross: bool | None = None    # True: cross-attention only; False: self-attention only
    needs_probs: bool = False    # reads or edits the probabilities
    any_tokens: bool = False     # holds on any set of tokens (fewer, out of grid order): token merging may run here

    def applies(self, layer: str, cross: bool) -> bool:
        return fnmatchcase(layer, self.layers) and (self.cross is None or self.cross == cross)

    def probs_at(self, call: AttnCall) -> bool:
        """Whether this call needs the probabilities (``needs_probs`` by default). A module that
        acts at some steps says which, so the others run fused attention; its :meth:`probs` must
        leave them alone where this is False."""
        return self.needs_probs

    def qkv(self, call: AttnCall, q, k, v):
        return q, k, v

    def probs(self, call: AttnCall, p: torch.Tensor) -> torch.Tensor:
        return p

    def output(self, call: AttnCall, out: torch.Tensor) -> torch.Tensor:
        """``out`` (B, T, heads * d) before the output projection."""
        return out


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


class ComposedProcessor:
    """diffusers' AttnProcessor2_0 with hooks for the layer's modules."""

    def __init__(self, layer: str, modules: Sequence[AttentionModule], info: CallInfo):
        self.layer, self.modules, self.info = layer, list(modules), info
        # whether a module reads the attention output of the full layout (else a ragged call attends on its rows)
        self.reads_outputs = any(type(m).output is not AttentionModule.output for m in self.modules)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        info = self.info
        if not info.ragged:
            return self._attend(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        # a call without some branch's unconditional half: the projections run on the call's rows, the
        # modules see the full layout (the missing rows are copies of that branch's conditional ones,
        # whose projections they are) and the output projection runs on the call's rows again
        rows = hidden_states.shape[0]
        if rows != len(info.rows()) * len(info.frames):
            raise ValueError(f"{self.layer}: a batch of {rows} for rows {info.rows()} x {len(info.frames)} frames")
        return self._attend(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                            full=info.to_full, run=info.to_run)

    def _attend(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, full=None, run=None):
        """diffusers' attention with the modules' hooks; ``full``/``run``: the call's rows to the
        (half, branch, frame) layout the modules see and back (None: the same)."""
        full = full or _same
        run = run or _same
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)  # (B, T, C)
        cross = encoder_hidden_states is not None
        batch, tokens, _ = hidden_states.shape
        if attention_mask is not None:
            kv_len = (encoder_hidden_states if cross else hidden_states).shape[1]
            attention_mask = attn.prepare_attention_mask(attention_mask, kv_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = encoder_hidden_states if cross else hidden_states
        if cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        d = k.shape[-1] // attn.heads
        q, k, v = (x.view(batch, -1, attn.heads, d).transpose(1, 2) for x in (q, k, v))  # (B, heads, T, d)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        q, k, v = full(q), full(k), full(v)
        if attention_mask is not None:
            attention_mask = full(attention_mask)

        call = AttnCall(layer=self.layer, cross=cross, info=self.info, heads=attn.heads, tokens=tokens,
                        scale=attn.scale)
        for m in self.modules:
            q, k, v = m.qkv(call, q, k, v)
        if any(m.probs_at(call) for m in self.modules):
            scores = (q @ k.transpose(-1, -2)) * attn.scale  # (B, heads, Tq, Tk)
            if attention_mask is not None:
                scores = scores + attention_mask
            p = scores.softmax(-1)
            for m in self.modules:
                p = m.probs(call, p)
            out = p.to(v.dtype) @ v
        elif run is not _same and not self.reads_outputs:
            # nothing reads the missing rows' products: attend on the call's rows alone (the same numbers)
            mask = run(attention_mask) if attention_mask is not None else None
            out = F.scaled_dot_product_attention(run(q), run(k), run(v), attn_mask=mask, scale=attn.scale)
            run = _same
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=attn.scale)
        out = out.transpose(1, 2).reshape(out.shape[0], -1, attn.heads * d).to(q.dtype)  # (B, T, heads * d)
        for m in self.modules:
            out = m.output(call, out)

        out = attn.to_out[1](attn.to_out[0](run(out)))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def merge(unet, processors: dict | None, modules: Sequence[AttentionModule], info: CallInfo) -> dict:
    """Add ``modules`` to an existing plan: layers both touch get one processor running the
    plan's modules, then the new ones."""
    merged = dict(processors or {})
    for layer, proc in compose(unet, modules, info).items():
        old = merged.get(layer)
        if old is None:
            merged[layer] = proc
        elif isinstance(old, ComposedProcessor):
            merged[layer] = ComposedProcessor(layer, [*old.modules, *proc.modules], info)
        else:
            raise ValueError(f"{layer} has a processor that cannot take more modules ({type(old).__name__})")
    return merged


def compose(unet, modules: Sequence[AttentionModule], info: CallInfo,
            prefix: str = "") -> dict[str, ComposedProcessor]:
    """{layer name: processor} for every attention layer at least one module applies to.
    Cross-attention layers are the ``attn2`` processors of diffusers' transformer blocks.
    ``prefix``: the modules see (and key their state by) ``prefix + name``, e.g. a ControlNet's
    layers as ``controlnet0.down_blocks...``, apart from the UNet's of the same name."""
    plan = {}
    for layer in unet.attn_processors:
        cross = layer.endswith("attn2.processor")
        active = [m for m in modules if m.applies(prefix + layer, cross)]
        if active:
            plan[layer] = ComposedProcessor(prefix + layer, active, info)
    return plan
