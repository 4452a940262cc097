"""DDIM steps as pure tensor functions (Song et al. 2021, Eq. 12 with sigma = 0)."""

from __future__ import annotations

import torch


def predict_x0_eps(x: torch.Tensor, model_output: torch.Tensor, alpha: float,
                   prediction_type: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor]:
    """The clean sample and the noise implied by ``model_output`` at noise level alpha-bar."""
    a, b = float(alpha) ** 0.5, (1 - float(alpha)) ** 0.5
    if prediction_type == "epsilon":
        return (x - b * model_output) / a, model_output
    if prediction_type == "v_prediction":  # Salimans & Ho 2022: v = a eps - b x0
        return a * x - b * model_output, a * model_output + b * x
    if prediction_type == "sample":
        return model_output, (x - a * model_output) / b
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def ddim_step(x: torch.Tensor, model_output: torch.Tensor, alpha: float, alpha_next: float,
              prediction_type: str = "epsilon") -> torch.Tensor:
    """Deterministic DDIM move of ``x`` from level alpha-bar ``alpha`` to ``alpha_next``."""
    x0, eps = predict_x0_eps(x, model_output, alpha, prediction_type)
    return float(alpha_next) ** 0.5 * x0 + (1 - float(alpha_next)) ** 0.5 * eps


def ddim_inverse_step(x: torch.Tensor, model_output: torch.Tensor, alpha: float, alpha_next: float,
                      prediction_type: str = "epsilon") -> torch.Tensor:
    """DDIM inversion step (Dhariwal & Nichol 2021, Eq. 13): the same map run towards more
    noise, ``alpha_next < alpha``, with ``model_output`` evaluated at the *target* timestep
    (the approximation every DDIM inversion makes)."""
    return ddim_step(x, model_output, alpha, alpha_next, prediction_type)


def clean_latent(y: torch.Tensor, eps: torch.Tensor, alpha_prev: float) -> torch.Tensor:
    """The clean latent a DDIM step moved towards: the step's output ``y`` at noise level
    ``alpha_prev`` less the step's noise ``eps`` (from :func:`predict_x0_eps`)."""
    return predict_x0_eps(y, eps, alpha_prev)[0]


def renoise(y0: torch.Tensor, eps: torch.Tensor, alpha_prev: float) -> torch.Tensor:
    """The inverse of :func:`clean_latent`: a clean latent back at noise level ``alpha_prev``."""
    return alpha_prev ** 0.5 * y0 + (1 - alpha_prev) ** 0.5 * eps
