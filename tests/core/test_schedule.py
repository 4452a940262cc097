"""make_schedule: diffusers' DDIM timesteps and alphas, with the pairs each step moves between."""

import pytest
import torch
from diffusers import DDIMScheduler

from videdit.core import ddim_step, make_schedule
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


@pytest.mark.parametrize("set_alpha_to_one", [False, True])
@pytest.mark.parametrize("steps_offset", [0, 1, None])
def test_steps_offset_is_diffusers_ddim_scheduler(steps_offset, set_alpha_to_one):
    """``make_schedule(config, N, steps_offset)`` is diffusers' DDIMScheduler built with that
    ``steps_offset`` (None: the config's, 1 for SD 1.x; the reference codes' 0): the same
    timesteps, alpha-bar at each, the alpha-bar each step lands on by DDIMScheduler's own rule
    (``prev_timestep = t - T // N``, the final alpha-bar below 0), and so the same DDIM step."""
    config = {**SD_SCHEDULER_CONFIG, "set_alpha_to_one": set_alpha_to_one}
    sched = DDIMScheduler.from_config(config if steps_offset is None else {**config, "steps_offset": steps_offset})
    sched.set_timesteps(10)
    s = make_schedule(config, 10, steps_offset)
    first = {0: 900, 1: 901, None: 901}[steps_offset]
    assert s.timesteps.tolist() == list(range(first, -1, -100)) == sched.timesteps.tolist()
    torch.testing.assert_close(s.alphas, sched.alphas_cumprod[sched.timesteps].double(), rtol=0, atol=0)
    for i, t in enumerate(sched.timesteps.tolist()):
        prev = t - 1000 // 10
        want = sched.alphas_cumprod[prev] if prev >= 0 else sched.final_alpha_cumprod
        assert float(s.alphas_prev[i]) == float(want)
        if i + 1 < len(s):
            assert float(s.alphas_prev[i]) == float(s.alphas[i + 1])   # leading spacing: the next timestep's
    final = 1.0 if set_alpha_to_one else float(sched.alphas_cumprod[0])
    assert float(s.alphas_prev[-1]) == float(sched.final_alpha_cumprod) == pytest.approx(final)
    # with steps_offset 0 and no alpha set to one, the last step lands where it started (t=0)
    assert (float(s.alphas_prev[-1]) == float(s.alphas[-1])) == (steps_offset == 0 and not set_alpha_to_one)
    gen = torch.Generator().manual_seed(0)
    x, eps = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 4, 8, 8, generator=gen)
    for i, t in enumerate(sched.timesteps):
        ours = ddim_step(x, eps, s.alphas[i], s.alphas_prev[i])
        torch.testing.assert_close(ours, sched.step(eps, t, x, eta=0.0).prev_sample, rtol=1e-6, atol=1e-6)


def test_steps_offset_rejects_negative():
    with pytest.raises(VideditError, match="steps_offset must be >= 0"):
        make_schedule(SD_SCHEDULER_CONFIG, 10, -1)
