"""Classifier-free guidance (Ho & Salimans 2022)."""

from __future__ import annotations

import torch


def cfg(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + scale * (cond - uncond)."""
    return uncond + scale * (cond - uncond)
