"""DDPM (eta = 1) steps as pure tensor functions (Ho et al. 2020, Eqs. 6-7; on a strided
schedule as DDIM's generalised step with eta = 1, Song et al. 2021, Eqs. 12 and 16)."""

from __future__ import annotations

import torch

from videdit.core.ddim import predict_x0_eps


def ddpm_sigma(alpha: float, alpha_next: float) -> float:
    """Posterior standard deviation of the move from alpha-bar ``alpha`` to ``alpha_next``."""
    alpha, alpha_next = float(alpha), float(alpha_next)
    return ((1 - alpha_next) / (1 - alpha) * (1 - alpha / alpha_next)) ** 0.5


def ddpm_mean(x: torch.Tensor, model_output: torch.Tensor, alpha: float, alpha_next: float,
              prediction_type: str = "epsilon") -> torch.Tensor:
    """Posterior mean mu(x_t) of the DDPM move from alpha-bar ``alpha`` to ``alpha_next``."""
    x0, eps = predict_x0_eps(x, model_output, alpha, prediction_type)
    sigma = ddpm_sigma(alpha, alpha_next)
    return float(alpha_next) ** 0.5 * x0 + max(1 - float(alpha_next) - sigma ** 2, 0.0) ** 0.5 * eps


def ddpm_step(x: torch.Tensor, model_output: torch.Tensor, alpha: float, alpha_next: float, noise: torch.Tensor,
              prediction_type: str = "epsilon") -> torch.Tensor:
    """mu(x_t) + sigma * noise: one stochastic DDPM move with the given standard-normal ``noise``."""
    return ddpm_mean(x, model_output, alpha, alpha_next, prediction_type) + ddpm_sigma(alpha, alpha_next) * noise
