import pytest
import torch

from tests.peers import latent_edit, stable_diffusion
from tests.inversion.approximate_runs import rel_error
from videdit.editing import EDITORS, get_editor
from videdit.errors import VideditError
from videdit.pipeline import EditSettings, edit_latents, invert_frames


def test_registry_and_errors():
    assert "plain" in EDITORS
    with pytest.raises(VideditError, match=r"unknown editor 'nope'; choose from \[.*'plain'"):
        get_editor("nope")
    with pytest.raises(VideditError, match="does not take strength"):
        EditSettings(editor="plain", editor_params={"strength": 1})
    with pytest.raises(VideditError, match="unknown inversion"):
        EditSettings(inversion="magic")


def test_plain_identity_is_the_reconstruction(tiny, wolf_frames):
    """Source prompt = target prompt: plain regeneration is exactly the DDIM reconstruction,
    which a hand-written sampling loop over the trajectory's noise reproduces."""
    from videdit.core import ddim_step, make_schedule

    s = EditSettings(source_prompt="a wolf", target_prompt="a wolf", guidance=1.0, steps=8)
    inv = invert_frames(tiny, wolf_frames, s)
    z = edit_latents(tiny, inv, s)
    sched, cond, x = make_schedule(tiny.scheduler_config, 8), tiny.encode_text(["a wolf"]).expand(2, -1, -1), inv.noise
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            out = tiny.unet(x, t, encoder_hidden_states=cond).sample
            x = ddim_step(x, out, sched.alphas[i], sched.alphas_prev[i])
    torch.testing.assert_close(z, x, rtol=1e-4, atol=1e-4)


def test_target_prompt_changes_the_result_deterministically(tiny, wolf_frames):
    s = EditSettings(source_prompt="a wolf", target_prompt="a robot wolf", guidance=5.0, steps=5)
    inv = invert_frames(tiny, wolf_frames, s)
    a, b = edit_latents(tiny, inv, s), edit_latents(tiny, inv, s)
    assert torch.equal(a, b)
    assert float((a - inv.source).norm() / inv.source.norm()) > 0.05


@pytest.mark.parametrize("steps_offset", [None, 0])
def test_plain_is_diffusers_stable_diffusion_pipeline(tiny, wolf_frames, steps_offset):
    """The plain editor after DDIM inversion is ``StableDiffusionPipeline`` + ``DDIMScheduler``
    (eta 0) started from the inverted noise, with the model's steps_offset (1) and the
    reference codes' 0. One frame, 10 steps, guidance 7.5; measured relative difference 2.7e-6
    (largest entry 3e-5 of latents up to 10: the DDIM coefficients round differently, fp64 here
    and fp32 in diffusers, and guidance 7.5 on random weights amplifies it)."""
    s = EditSettings(source_prompt="a wolf", target_prompt="a fox", steps=10, guidance=7.5, strength=1.0,
                     steps_offset=steps_offset)
    inv = invert_frames(tiny, wolf_frames[:1], s)
    z = edit_latents(tiny, inv, s)
    pipe = stable_diffusion(tiny, steps_offset)
    with torch.no_grad():
        want = latent_edit(pipe, inv.noise, "a fox", 10, 7.5)
    assert pipe.scheduler.timesteps.tolist() == s.schedule(tiny.scheduler_config).timesteps.tolist()
    assert rel_error(z, want) <= 1e-5, rel_error(z, want)
