"""The one data type where inversions and editors meet."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import torch


@dataclass
class Inversion:
    """What an inversion hands the editors.

    ``trajectory[i]`` is the source latent at ``schedule.timesteps[i]`` and
    ``trajectory[-1]`` the clean source latent ``z0``, so ``trajectory[0]`` is the initial
    noise. Shapes: trajectory (N+1, F, C, h, w); each extra has the frames along axis 0, or
    along the axis ``frame_axes`` names for it (1 for a per-step extra (N, F, ...)).
    """

    method: str
    trajectory: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    unet_evals: int = 0          # UNet evaluations per frame spent inverting
    evals_per_step: int = 0      # extra UNet evaluations per frame it adds to each editing step
    start_step: int = 0          # sampling starts at schedule step start_step (DDPM inversion's skip)
    cached: bool = False         # loaded from the on-disk cache
    frame_axes: dict[str, int] = field(default_factory=dict)   # extra -> its frame axis, where not 0

    @property
    def noise(self) -> torch.Tensor:
        """(F, C, h, w): the latent the edit starts from: ``trajectory[start_step]``, or the extra
        ``start`` (at the first step) where the inversion gives another (TokenFlow's re-noised start:
        DDIM's ``start_noise``)."""
        if "start" in self.extras and self.start_step == 0:
            return self.extras["start"]
        return self.trajectory[self.start_step]

    @property
    def source(self) -> torch.Tensor:
        """(F, C, h, w): the clean source latents that were inverted."""
        return self.trajectory[-1]

    @property
    def n_steps(self) -> int:
        return self.trajectory.shape[0] - 1

    def select(self, frames: Sequence[int]) -> "Inversion":
        """The record of some of the frames (indices into F). Every method replays each frame
        on its own (batching only groups them), so the slices replay those frames as the whole
        record does; for a method registered with ``independent_frames`` they are also what
        inverting those frames alone gives."""
        idx = torch.as_tensor(list(frames), dtype=torch.long)
        extras = {k: v.index_select(self.frame_axes.get(k, 0), idx.to(v.device)) for k, v in self.extras.items()}
        return dataclasses.replace(self, trajectory=self.trajectory.index_select(1, idx.to(self.trajectory.device)),
                                   extras=extras)
