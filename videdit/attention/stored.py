"""Attention stored in an :class:`~videdit.inversion.Inversion` record's extras, where an
inversion that records attention (``fatezero``) and an editor that fuses it meet: the extras'
names, the module that records them while inverting and the reader the edit uses.

Extras, each per step and frame (N, F, heads, ...), frame axis 1:

* ``attn.<layer>``: attention maps (N, F, heads, Tq, Tk) of the conditional half;
* ``attn_q.<layer>``, ``attn_k.<layer>``: queries and keys (N, F, heads, T, d), from which the
  maps are softmax(q k^T scale) (smaller than the maps on large grids);
* ``anchor.<layer>``: (F, m) the frames each frame's self-attention attended to (frame axis 0).
"""

from __future__ import annotations

from typing import Mapping

import torch

from videdit.attention.processor import AttentionModule, AttnCall

MAPS, QUERIES, KEYS, ANCHOR = "attn.", "attn_q.", "attn_k.", "anchor."


def consecutive(frames) -> slice | None:
    """``frames`` as a slice where they are consecutive (indexing with it gives a view), else None."""
    if len(frames) and list(frames) == list(range(frames[0], frames[0] + len(frames))):
        return slice(frames[0], frames[0] + len(frames))
    return None


class AttentionRecorder(AttentionModule):
    """``AttentionStore.forward`` during inversion: the conditional half's maps, or queries and
    keys (after the modules before it: the anchor's keys on anchored layers), of ``layers``
    ({processor name: "maps" | "qk"}) at every step, into (N, F, heads, ...) CPU tensors.

    From a GPU the stores are pinned host memory and each copy is queued on the GPU's stream
    (``non_blocking``), so the UNet's next kernels are not held back by the transfer;
    :meth:`finished` waits for the last copy before the tensors are read."""

    needs_probs = True
    queue_copies = True   # False: each copy waits (tools/gpu_check.py compares the two)

    def __init__(self, layers: dict[str, str], n_steps: int, n_frames: int):
        self.layers, self.n_steps, self.n_frames = layers, n_steps, n_frames
        self.extras: dict[str, torch.Tensor] = {}
        self._copied: torch.cuda.Event | None = None   # recorded after the last queued copy

    def applies(self, layer: str, cross: bool) -> bool:
        return layer in self.layers

    def _keep(self, key: str, call: AttnCall, x: torch.Tensor) -> None:
        x = call.split(x)[-1, 0]                                   # (fb, heads, T, d): the conditional half
        if key not in self.extras:
            self.extras[key] = torch.empty(self.n_steps, self.n_frames, *x.shape[1:], dtype=x.dtype,
                                           pin_memory=x.is_cuda)
        frames = call.info.frames
        run = consecutive(frames)
        if self.queue_copies and x.is_cuda and run is not None:
            self.extras[key][call.info.step, run].copy_(x, non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record()
        else:
            self.extras[key][call.info.step, list(frames)] = x.cpu()

    def finished(self) -> dict[str, torch.Tensor]:
        """The stored tensors, once every queued copy has landed."""
        if self._copied is not None:
            self._copied.synchronize()
        return self.extras

    def qkv(self, call, q, k, v):
        if call.info.inverting and self.layers[call.layer] == "qk":
            self._keep(QUERIES + call.layer, call, q)
            self._keep(KEYS + call.layer, call, k)
        return q, k, v

    def probs_at(self, call) -> bool:
        return call.info.inverting and self.layers[call.layer] == "maps"

    def probs(self, call, p):
        if call.info.inverting and self.layers[call.layer] == "maps":
            self._keep(MAPS + call.layer, call, p)
        return p


class StoredAttention:
    """The inversion's stored attention (the record's extras) at a step, for some frames."""

    def __init__(self, extras: Mapping[str, torch.Tensor]):
        self.extras = extras

    def layers(self) -> set[str]:
        return {k.removeprefix(MAPS).removeprefix(QUERIES) for k in self.extras if k.startswith((MAPS, QUERIES))}

    def maps(self, call: AttnCall, frames: list[int], like: torch.Tensor) -> torch.Tensor:
        """(fb, heads, Tq, Tk): the maps of ``call.layer`` at ``call.info.step`` for ``frames``,
        stored or computed from the stored queries and keys (softmax(q k^T scale))."""
        step = call.info.step
        frames = consecutive(frames) or frames   # a slice of a pinned store stays pinned

        def stored(key: str) -> torch.Tensor:   # from pinned memory the copy is queued on the GPU's stream
            return self.extras[key][step, frames].to(like, non_blocking=True)

        if MAPS + call.layer in self.extras:
            return stored(MAPS + call.layer)
        q, k = stored(QUERIES + call.layer), stored(KEYS + call.layer)       # (fb, heads, T, d)
        return ((q @ k.transpose(-1, -2)) * call.scale).softmax(-1)


def anchors(extras: Mapping[str, torch.Tensor]) -> tuple[list[str], torch.Tensor | None]:
    """The anchored self-attention layers and the (F, m) frames each frame attended to there."""
    layers = sorted(k.removeprefix(ANCHOR) for k in extras if k.startswith(ANCHOR))
    return layers, (extras[ANCHOR + layers[0]] if layers else None)
