import pytest
import torch
from diffusers import DDIMScheduler

from videdit.core import ddim_inverse_step, ddim_step, make_schedule, predict_x0_eps
from videdit.models.tiny import SD_SCHEDULER_CONFIG


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_step_matches_diffusers(prediction_type):
    config = {**SD_SCHEDULER_CONFIG, "prediction_type": prediction_type}
    sched = DDIMScheduler.from_config(config)
    sched.set_timesteps(25)
    s = make_schedule(config, 25)
    assert torch.equal(s.timesteps, sched.timesteps)
    x, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for i in (0, 7, 24):  # 24: lands on the final alpha
        want = sched.step(out, int(s.timesteps[i]), x).prev_sample
        got = ddim_step(x, out, s.alphas[i], s.alphas_prev[i], prediction_type)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_inverse_step_undoes_step_for_the_same_prediction(prediction_type):
    x, out = torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.randn(3, 4, 8, 8, dtype=torch.float64)
    a, b = 0.3, 0.7
    y = ddim_step(x, out, a, b, prediction_type)
    # the noise implied at the new level, fed back, returns exactly to x
    _, eps = predict_x0_eps(x, out, a, prediction_type)
    x0, _ = predict_x0_eps(x, out, a, prediction_type)
    out_b = eps if prediction_type == "epsilon" else b**0.5 * eps - (1 - b) ** 0.5 * x0
    torch.testing.assert_close(ddim_inverse_step(y, out_b, b, a, prediction_type), x)


def test_v_prediction_recovers_x0_and_eps():
    x0, eps, a = torch.randn(4, 4), torch.randn(4, 4), 0.4
    xt = a**0.5 * x0 + (1 - a) ** 0.5 * eps
    v = a**0.5 * eps - (1 - a) ** 0.5 * x0
    px0, peps = predict_x0_eps(xt, v, a, "v_prediction")
    torch.testing.assert_close(px0, x0)
    torch.testing.assert_close(peps, eps)
