"""BDIA (videdit/inversion/bdia.py): the official code's defaults and loops (strength, the
inverted first step), and a callback's change keeping its kept latent consistent."""

import pytest
import torch

from tests.inversion.exact_runs import (PROMPT, ZeroCorner, alpha_at, official_eps, official_step,
                                        reference_scheduler, rel_error, replay_context, settings_for)
from videdit.inversion import INVERSIONS
from videdit.inversion.bdia import BDIAConfig
from videdit.pipeline import EditSettings, edit_latents, invert_frames, reconstruct


def test_bdia_callback_change_moves_the_kept_latent(tiny, wolf_frames):
    inv = invert_frames(tiny, wolf_frames, settings_for("bdia"))
    sampler = INVERSIONS["bdia"].replay(inv, replay_context(tiny), INVERSIONS["bdia"].config()).sampler
    x_prev, x = inv.trajectory[0][None], inv.trajectory[1][None]
    state = (x_prev, 0.5, x)
    moved = ZeroCorner().on_step_end(None, x)
    new = sampler.with_latents(state, moved)
    torch.testing.assert_close(new[0] - new[2], x_prev - x, check_dtype=False)
    assert sampler.with_latents(sampler.start(x), moved)[0] is None  # first step: nothing kept yet


def official_bdia(unet, z0, source, target, uncond, sched, strength, gamma, guidance):
    """guoqiang-zhang-x/BDIA image-editing/bdia_edict_functions.py, BDIA_editing (run_baseline=True:
    one latent sequence): BDIA_stablediffusion(reverse=True) from the image latent, then
    BDIA_stablediffusion from the pair (z_s, z_{s+1}) it returns under the edit prompt, the loops
    transcribed. -> that pair and the edited latent."""
    steps = len(sched.timesteps)
    t_limit = steps - int(steps * strength)
    down = sched.config.num_train_timesteps / steps
    t_prev, latent_prev, new_latent = None, None, z0.double()
    for t in sched.timesteps[t_limit:].flip(0):
        x = new_latent
        current = float(t) - down                             # the model is evaluated one level down
        eps = official_eps(unet, x, current, source, uncond, guidance)
        if t_prev is None:                                    # first: DDIM inversion from `current` up to t
            a_next, a = alpha_at(sched, t), alpha_at(sched, current)
            q = (a_next / a) ** 0.5
            new_latent = q * x + (1 - a_next) ** 0.5 * eps - q * (1 - a) ** 0.5 * eps
        else:
            up = official_step(sched, eps, t, x, reverse=True)
            backward = official_step(sched, eps, current, x, reverse=False)
            new_latent = latent_prev / gamma - backward / gamma + up
        t_prev, latent_prev = current, x
    pair = (new_latent, x)
    timesteps = sched.timesteps[t_limit:]
    latent_prev, new_latent, t_prev = pair[0], pair[1], timesteps[0]
    for t in timesteps[1:]:
        x = new_latent
        eps = official_eps(unet, x, t, target, uncond, guidance)
        down_step = official_step(sched, eps, t, x, reverse=False)
        a_prev, a = alpha_at(sched, t_prev), alpha_at(sched, t)
        q = (a_prev / a) ** 0.5
        backward = q * x + (1 - a_prev) ** 0.5 * eps - q * (1 - a) ** 0.5 * eps
        new_latent = (latent_prev - (1 - gamma) * (latent_prev - x) - gamma * (backward - x) + (down_step - x))
        t_prev, latent_prev = t, x
    return pair, new_latent


def test_bdia_defaults_are_the_official_editing_call():
    """bdia_edict_functions.py BDIA_editing: steps=50, init_image_strength=0.8, guidance_scale=3
    (inverting and editing); BDIA_experiments.ipynb passes gamma=0.94; the edit starts from the
    inverted pair (``first_step="inverted"``)."""
    s = EditSettings(inversion="bdia")
    assert (s.steps, s.guidance, s.strength, s.start_step) == (50, 3.0, 0.8, 10)
    assert s.inversion_config == BDIAConfig(gamma=0.94, guidance=3.0, first_step="inverted")
    assert "guoqiang-zhang-x/BDIA" in INVERSIONS["bdia"].reference
    assert [d.option for d in INVERSIONS["bdia"].departures()] == ["first_step"]


def test_bdia_edit_is_the_official_code(tiny, wolf_frames):
    """One frame, 10 steps, the official defaults otherwise (strength 0.8: steps 2..9; guidance 3;
    gamma 0.94; steps_offset 0): videdit's inversion and edit against the official loops
    (:func:`official_bdia`) with the same UNet. Measured: the inverted pair agrees to 5.4e-6 and
    2.7e-6 relative (videdit combines the guidance in fp32, the official code in float64, and each
    inverse step divides by gamma), the edit to 1.7e-6; the old first step (a DDIM step under the
    edit's prompt plus its gap, now ``first_step="edited"``) is 8.7e-2 off. The inversion runs only
    the 8 steps it edits, one guided UNet call each."""
    frames = wolf_frames[:1]
    s = EditSettings(source_prompt=PROMPT, target_prompt="a fox", steps=10, steps_offset=0, inversion="bdia")
    inv = invert_frames(tiny, frames, s)
    z = edit_latents(tiny, inv, s)
    assert inv.start_step == 2 and inv.unet_evals == 16
    source, target, uncond = tiny.encode_text([PROMPT, "a fox", ""])[:, None]
    pair, edited = official_bdia(tiny.unet, inv.source, source, target, uncond, reference_scheduler(tiny, 10),
                                 0.8, 0.94, 3.0)
    start = inv.noise.double() + inv.extras["residual"].double()
    assert rel_error(start, pair[0]) < 2e-5 and rel_error(start + inv.extras["first_offset"], pair[1]) < 2e-5
    assert rel_error(z, edited) < 1e-5, rel_error(z, edited)
    old = EditSettings(source_prompt=PROMPT, target_prompt="a fox", steps=10, steps_offset=0, inversion="bdia",
                       inversion_params={"first_step": "edited"})
    assert rel_error(edit_latents(tiny, invert_frames(tiny, frames, old), old), edited) > 1e-2


@pytest.mark.parametrize("first_step", ["inverted", "edited"])
def test_bdia_first_step_reconstructs_either_way(tiny, wolf_frames, first_step):
    """Measured on these frames (fp32, 10 steps, strength 0.8, guidance 3): 0 for both."""
    s = settings_for("bdia", guidance=3.0, inversion_params={"first_step": first_step})
    inv = invert_frames(tiny, wolf_frames, s)
    assert inv.unet_evals == 2 * (8 + (first_step == "edited"))
    assert rel_error(reconstruct(tiny, inv, s), inv.source) <= 1e-5
