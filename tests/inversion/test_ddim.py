import pytest
import torch
from diffusers import DDIMInverseScheduler

from videdit.pipeline import EditSettings, edit_latents, invert_frames


def rel_error(a, b):
    return float((a - b).norm() / b.norm())


def test_matches_diffusers_ddim_inverse_scheduler(tiny, wolf_frames):
    settings = EditSettings(source_prompt="a wolf", steps=20)
    inv = invert_frames(tiny, wolf_frames, settings)
    sched = DDIMInverseScheduler.from_config(tiny.scheduler_config)
    sched.set_timesteps(20)
    cond = tiny.encode_text(["a wolf"]).expand(len(wolf_frames), -1, -1)
    x = inv.source.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(tiny.unet(x, t, encoder_hidden_states=cond).sample, t, x).prev_sample
    assert torch.allclose(x, inv.noise, atol=1e-5), float((x - inv.noise).abs().max())
    assert inv.trajectory.shape == (21, 2, 4, 8, 8)
    assert inv.unet_evals == 20


@pytest.mark.slow   # 6 s; the suite was at its 10-minute bound (the toy model's DDIM bound stays: test_toy_model.py)
def test_reconstruction_error_shrinks_with_steps(tiny, wolf_frames):
    """tiny-random's noise predictions are not smooth in t, so DDIM's reconstruction is only
    approximate; it must get better as the steps get finer (measured 0.54, 0.24, 0.069 on the
    first frame; 0.61, 0.33, 0.095 on both; diffusers' own inverse scheduler gave 0.97, 0.40,
    0.14 on a similar model)."""
    errors = {}
    for steps in (10, 50, 200):
        s = EditSettings(source_prompt="a wolf", target_prompt="a wolf", guidance=1.0, steps=steps)
        inv = invert_frames(tiny, wolf_frames[:1], s)
        errors[steps] = rel_error(edit_latents(tiny, inv, s), inv.source)
    assert errors[10] > errors[50] > errors[200]
    assert errors[200] < 0.2
    assert 0.3 < errors[10] < 1.0


def test_v_prediction(tiny, wolf_frames):
    """The same code path serves v-prediction models (SD 2.x): inversion matches diffusers."""
    import dataclasses

    model = dataclasses.replace(tiny, scheduler_config={**tiny.scheduler_config, "prediction_type": "v_prediction"})
    assert model.prediction_type == "v_prediction"
    inv = invert_frames(model, wolf_frames[:1], EditSettings(steps=10))
    sched = DDIMInverseScheduler.from_config(model.scheduler_config)
    sched.set_timesteps(10)
    x, cond = inv.source.clone(), model.encode_text([""])
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(model.unet(x, t, encoder_hidden_states=cond).sample, t, x).prev_sample
    assert torch.allclose(x, inv.noise, atol=1e-5)


def test_every_timestep_is_plug_and_plays_preprocess(tiny, wolf_frames):
    """``every_timestep`` inverts as MichalGeyer/pnp-diffusers ``preprocess.py``
    (``Preprocess.ddim_inversion``): DDIM steps over every training timestep under the
    conditional embedding only, from the final alpha to the first timestep and on one timestep
    at a time, the edit reading the latents at its own timesteps. A schedule of 50 training
    timesteps keeps it short: its 49-step inversion (timesteps 1..49, as the official 999 on
    1000) against videdit's 5-step edit (41, 31, 21, 11, 1)."""
    import dataclasses

    from diffusers import DDIMScheduler

    model = dataclasses.replace(tiny, scheduler_config={**tiny.scheduler_config, "num_train_timesteps": 50})
    s = EditSettings(steps=5, inversion_params={"every_timestep": True})
    inv = invert_frames(model, wolf_frames[:1], s)
    sched = DDIMScheduler.from_config(model.scheduler_config)
    sched.set_timesteps(49)
    steps = list(reversed(sched.timesteps.tolist()))
    assert steps == list(range(1, 50))
    cond, latent, saved = model.encode_text([""]), inv.source.clone(), {}   # get_text_embeds(inversion_prompt, "")[1]
    with torch.no_grad():
        for i, t in enumerate(steps):
            a_t = sched.alphas_cumprod[t]
            a_prev = sched.alphas_cumprod[steps[i - 1]] if i > 0 else sched.final_alpha_cumprod
            eps = model.unet(latent, t, encoder_hidden_states=cond).sample
            x0 = (latent - (1 - a_prev) ** 0.5 * eps) / a_prev ** 0.5
            latent = a_t ** 0.5 * x0 + (1 - a_t) ** 0.5 * eps
            saved[t] = latent
    timesteps = s.schedule(model.scheduler_config).timesteps.tolist()
    assert timesteps == [41, 31, 21, 11, 1] and inv.unet_evals == 41
    for i, t in enumerate(timesteps):
        assert rel_error(inv.trajectory[i], saved[t]) < 1e-5, (t, rel_error(inv.trajectory[i], saved[t]))
    assert torch.equal(inv.trajectory[-1], inv.source)
    coarse = invert_frames(model, wolf_frames[:1], EditSettings(steps=5))
    assert rel_error(coarse.noise, saved[41]) > 1e-3   # one step per edit step is another inversion


def test_inversion_steps_is_tokenflows_preprocess(tiny, wolf_frames):
    """``inversion_steps`` inverts as omerbt/TokenFlow ``preprocess.py`` (``--steps 500``,
    saving the latents at the 50 timesteps of the edit): the inversion's own schedule, on a
    20-step schedule for a 10-step edit here, is a plain 20-step DDIM inversion, and the edit
    reads its latents at its own timesteps (901, 801, ..., 1 among 951, 901, ..., 1)."""
    import dataclasses

    s = EditSettings(steps=10, inversion_params={"inversion_steps": 20})
    inv = invert_frames(tiny, wolf_frames[:1], s)
    fine = invert_frames(tiny, wolf_frames[:1], EditSettings(steps=20))
    t10 = s.schedule(tiny.scheduler_config).timesteps.tolist()
    t20 = EditSettings(steps=20).schedule(tiny.scheduler_config).timesteps.tolist()
    assert t10[:2] == [901, 801] and t20[:2] == [951, 901] and inv.unet_evals == 9 * 2 + 1
    for i, t in enumerate(t10):
        torch.testing.assert_close(inv.trajectory[i], fine.trajectory[t20.index(t)], rtol=0, atol=1e-5)
    torch.testing.assert_close(inv.trajectory[-1], inv.source)
    with pytest.raises(Exception, match="inversion_steps 30 does not pass through the edit's 10 timesteps"):
        invert_frames(tiny, wolf_frames[:1], dataclasses.replace(s, inversion_params={"inversion_steps": 30}))


def test_renoised_start_is_tokenflows(tiny, wolf_frames):
    """``start_noise="renoised"`` (TokenFlow: preprocess.py inverts on to the top of its schedule,
    run_tokenflow_pnp.py starts from add_noise(z0, get_ddim_eps(z0), timesteps[0])): a 10-step edit
    inverted through 20 steps carries the inversion on from 901 to 951, one more evaluation, and
    starts from z0 noised to 901 with the 951 latent's noise; the source's latents stay the plain
    inversion's. Without a finer schedule there is no step on and the start is the inverted latent."""
    renoised = {"inversion_steps": 20, "start_noise": "renoised"}
    inv = invert_frames(tiny, wolf_frames[:1], EditSettings(steps=10, inversion_params=renoised))
    plain = invert_frames(tiny, wolf_frames[:1], EditSettings(steps=10, inversion_params={"inversion_steps": 20}))
    fine = invert_frames(tiny, wolf_frames[:1], EditSettings(steps=20))    # trajectory[0]: the latent at 951
    assert torch.equal(inv.trajectory, plain.trajectory) and inv.unet_evals == plain.unet_evals + 1
    acp = EditSettings(steps=10).schedule(tiny.scheduler_config).alphas_cumprod
    z0 = inv.source.double()
    eps = (fine.trajectory[0].double() - acp[951].sqrt() * z0) / (1 - acp[951]).sqrt()
    torch.testing.assert_close(inv.noise.double(), acp[901].sqrt() * z0 + (1 - acp[901]).sqrt() * eps,
                               rtol=0, atol=1e-5)
    assert rel_error(inv.noise, inv.trajectory[0]) > 1e-3
    same = invert_frames(tiny, wolf_frames[:1], EditSettings(steps=10, inversion_params={"start_noise": "renoised"}))
    torch.testing.assert_close(same.noise, same.trajectory[0], rtol=0, atol=1e-5)
    with pytest.raises(Exception, match="start_noise must be one of"):
        EditSettings(inversion_params={"start_noise": "top"}).inversion_config
