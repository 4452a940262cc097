"""Float64 latent algebra for the exact inversions whose samplers keep their state in float64
(EDICT, BDIA): the fp32 record plus the residual of its start, and callbacks' changes carried
into the float64 state."""

from __future__ import annotations

import torch


def split(path: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A float64 path (N+1, F, C, h, w) -> (its fp32 rounding, the residual of entry ``start``,
    what the rounding took off the latent sampling starts from, stored as fp32)."""
    rounded = path.float()
    return rounded, (path[start] - rounded[start].double()).float()


def from_step(path: torch.Tensor, start: int) -> torch.Tensor:
    """A path inverted from the clean latent up to schedule step ``start`` only, (N+1-start, F, C, h, w)
    -> the record's (N+1, F, C, h, w): the skipped entries (an edit at strength < 1 never reads
    them) hold the start latent, so the record keeps its shape and stays finite for the cache."""
    return torch.cat([path[:1].expand(start, *path.shape[1:]), path])


def start(x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """The float64 sampling start: the fp32 latents (any leading branch dims) plus the residual."""
    return x.double() + residual.to(x.device, torch.float64)


def change(old: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The float64 change a callback made to the state ``old`` by returning ``x`` from its fp32
    view: exactly 0 where ``x`` is still ``old``'s rounding, ``x - old`` where it was changed."""
    return torch.where(x == old.float(), torch.zeros_like(old, dtype=torch.float64), x.double() - old)
