"""make_schedule: diffusers' DDIM timesteps and alphas, with the pairs each step moves between."""

import pytest
import torch
from diffusers import DDIMScheduler

from videdit.core import make_schedule
from videdit.errors import VideditError
from videdit.models.tiny import SD_SCHEDULER_CONFIG


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_schedule_alphas_follow_diffusers(spacing):
    config = {**SD_SCHEDULER_CONFIG, "timestep_spacing": spacing}
    sched = DDIMScheduler.from_config(config)
    sched.set_timesteps(10)
    s = make_schedule(config, 10)
    assert torch.equal(s.timesteps, sched.timesteps)
    assert torch.all(s.timesteps[:-1] > s.timesteps[1:])
    torch.testing.assert_close(s.alphas, sched.alphas_cumprod[sched.timesteps].double())
    assert float(s.alphas_prev[-1]) == pytest.approx(float(sched.final_alpha_cumprod))


def test_schedule_rejects_bad_steps():
    with pytest.raises(VideditError, match="steps must be >= 1"):
        make_schedule(SD_SCHEDULER_CONFIG, 0)
    with pytest.raises(VideditError, match="<= 1000"):
        make_schedule(SD_SCHEDULER_CONFIG, 1001)


def test_small_linear_schedule_by_hand():
    """10 training steps, betas 0.1..0.28 linear, 5 leading steps with offset 0: timesteps 8, 6, 4, 2, 0;
    each step lands on the next one's alpha-bar and the last on alpha-bar 1 (set_alpha_to_one)."""
    config = {"num_train_timesteps": 10, "beta_start": 0.1, "beta_end": 0.28, "beta_schedule": "linear",
              "set_alpha_to_one": True, "steps_offset": 0, "timestep_spacing": "leading"}
    s = make_schedule(config, 5)
    acp = torch.cumprod(1 - torch.linspace(0.1, 0.28, 10, dtype=torch.float64), 0)
    assert len(s) == 5 and s.timesteps.tolist() == [8, 6, 4, 2, 0]
    torch.testing.assert_close(s.alphas_cumprod, acp, rtol=1e-6, atol=0)
    torch.testing.assert_close(s.alphas, acp[[8, 6, 4, 2, 0]], rtol=1e-6, atol=0)
    torch.testing.assert_close(s.alphas_prev, torch.cat([acp[[6, 4, 2, 0]], acp.new_ones(1)]), rtol=1e-6, atol=0)
    assert s.alphas.dtype == s.alphas_prev.dtype == torch.float64
