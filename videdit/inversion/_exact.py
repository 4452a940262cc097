"""Shared by the exact inversions that store per-step corrections (direct, DDPM)."""

from __future__ import annotations

import torch


def float64(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float64 on its device, or on the CPU where the device has no float64 (MPS).
    A step's stored correction is added in float64 so that an fp32 step plus the correction
    lands on the recorded latent to the last bit."""
    return x.double() if x.device.type != "mps" else x.cpu().double()
