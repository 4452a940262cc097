"""Record cross-attention maps: which latent pixels attend to which prompt tokens."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from videdit.attention.processor import AttentionModule, AttnCall


class CrossAttentionStore(AttentionModule):
    """Sums the conditional half's cross-attention probabilities of ``tokens``, averaged over
    heads and resized to the latent grid, over the layers matching ``layers`` and the steps
    in ``steps`` (all when None). :meth:`maps` gives the mean: (nb, F, len(tokens), h, w)."""

    cross = True
    needs_probs = True

    def __init__(self, tokens: Sequence[int], n_frames: int, layers: str = "*", steps: Sequence[int] | None = None):
        self.tokens, self.n_frames, self.layers = list(tokens), n_frames, layers
        self.steps = None if steps is None else set(steps)
        self.total: torch.Tensor | None = None
        self.count = torch.zeros(n_frames)

    def active(self, call: AttnCall) -> bool:
        return not call.info.inverting and (self.steps is None or call.info.step in self.steps)

    def probs_at(self, call: AttnCall) -> bool:
        return self.active(call)

    def probs(self, call: AttnCall, p: torch.Tensor) -> torch.Tensor:
        if not self.active(call):
            return p
        h, w = call.spatial()
        m = call.split(p.mean(1))[-1][..., self.tokens]           # (nb, fb, T, k): conditional half
        nb, fb = m.shape[:2]
        m = m.transpose(-1, -2).reshape(nb * fb, len(self.tokens), h, w).float()
        m = F.interpolate(m, size=call.info.latent_size, mode="bilinear", align_corners=False)
        m = m.view(nb, fb, len(self.tokens), *call.info.latent_size)
        if self.total is None:
            self.total = m.new_zeros(nb, self.n_frames, len(self.tokens), *call.info.latent_size)
        frames = list(call.info.frames)
        self.total[:, frames] += m
        self.count[frames] += 1
        return p

    def maps(self) -> torch.Tensor:
        if self.total is None:
            raise RuntimeError("no cross-attention was recorded")
        return self.total / self.count.clamp(min=1).view(1, -1, 1, 1, 1).to(self.total)
