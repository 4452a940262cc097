"""The one data type where inversions and editors meet."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Inversion:
    """What an inversion hands the editors.

    ``trajectory[i]`` is the source latent at ``schedule.timesteps[i]`` and
    ``trajectory[-1]`` the clean source latent ``z0``, so ``trajectory[0]`` is the initial
    noise. Shapes: trajectory (N+1, F, C, h, w).
    """

    method: str
    trajectory: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    unet_evals: int = 0          # UNet evaluations per frame spent inverting
    evals_per_step: int = 0      # extra UNet evaluations per frame it adds to each editing step
    start_step: int = 0          # sampling starts at schedule step start_step (DDPM inversion's skip)
    cached: bool = False         # loaded from the on-disk cache

    @property
    def noise(self) -> torch.Tensor:
        """(F, C, h, w): the latent sampling starts from, ``trajectory[start_step]``."""
        return self.trajectory[self.start_step]

    @property
    def source(self) -> torch.Tensor:
        """(F, C, h, w): the clean source latents that were inverted."""
        return self.trajectory[-1]

    @property
    def n_steps(self) -> int:
        return self.trajectory.shape[0] - 1
