"""DDPM (eta = 1) steps: the posterior sigma, mean and noisy step against the formulas written out."""

import math

import pytest
import torch

from videdit.core.ddpm import ddpm_mean, ddpm_sigma, ddpm_step

A, A_NEXT = 0.36, 0.64  # alpha-bar now and after the step


def test_sigma_is_the_posterior_std():
    # beta-tilde = (1 - a_next) / (1 - a) * (1 - a / a_next), Ho et al. Eq. 7
    assert ddpm_sigma(A, A_NEXT) == pytest.approx(math.sqrt(0.36 / 0.64 * (1 - 0.36 / 0.64)))
    assert ddpm_sigma(0.5, 0.5) == 0.0                                     # no move, no noise


def test_mean_and_step_by_hand():
    x = torch.tensor([[1.0, -0.5], [2.0, 0.0]], dtype=torch.float64)
    eps = torch.tensor([[0.2, 0.4], [-1.0, 0.5]], dtype=torch.float64)
    noise = torch.tensor([[1.0, -1.0], [0.0, 2.0]], dtype=torch.float64)
    x0 = (x - math.sqrt(1 - A) * eps) / math.sqrt(A)
    sigma = ddpm_sigma(A, A_NEXT)
    want = math.sqrt(A_NEXT) * x0 + math.sqrt(1 - A_NEXT - sigma ** 2) * eps
    torch.testing.assert_close(ddpm_mean(x, eps, A, A_NEXT), want)
    torch.testing.assert_close(ddpm_step(x, eps, A, A_NEXT, noise), want + sigma * noise)
    # the same mean in Ho et al.'s form: sqrt(a_next) beta / (1 - a) x0 + sqrt(alpha) (1 - a_next) / (1 - a) x
    alpha, beta = A / A_NEXT, 1 - A / A_NEXT
    ho = math.sqrt(A_NEXT) * beta / (1 - A) * x0 + math.sqrt(alpha) * (1 - A_NEXT) / (1 - A) * x
    torch.testing.assert_close(ddpm_mean(x, eps, A, A_NEXT), ho)


def test_v_prediction_gives_the_same_step_as_its_epsilon():
    x0, eps = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    x = math.sqrt(A) * x0 + math.sqrt(1 - A) * eps
    v = math.sqrt(A) * eps - math.sqrt(1 - A) * x0
    noise = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(ddpm_step(x, v, A, A_NEXT, noise, "v_prediction"), ddpm_step(x, eps, A, A_NEXT, noise))
