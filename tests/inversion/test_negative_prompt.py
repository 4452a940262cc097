"""Negative-prompt inversion (videdit/inversion/negative_prompt.py): replaying the source prompt as
the unconditional one is guidance-1 DDIM, for NPI and for ProxEdit, which replays it too (its
inversion guidance, on by default, pulls that replay onto the source latents); an NPI edit is
diffusers' pipeline with the source as the negative prompt."""

import pytest
import torch

from tests.inversion.approximate_runs import settings
from tests.inversion.exact_runs import rel_error
from tests.peers import latent_edit, stable_diffusion
from videdit.config import make_config
from videdit.core.schedule import make_schedule
from videdit.inversion import ReplayContext, get_inversion
from videdit.pipeline import EditSettings, edit_latents, invert_frames, reconstruct


@pytest.mark.parametrize("method, params", [("npi", {}), ("proxedit", {"inversion_guidance": False})])
def test_source_prompt_replay_is_guidance_one_ddim(tiny, wolf_frames, method, params):
    """cond == uncond when target = source, so any guidance gives DDIM's guidance-1 result
    (up to rounding: the guided UNet batch is twice the size; measured 8e-6 at most)."""
    inv = invert_frames(tiny, wolf_frames, settings(method, **params))
    ddim = invert_frames(tiny, wolf_frames, settings(scale=1))
    torch.testing.assert_close(inv.trajectory, ddim.trajectory, atol=0, rtol=0)
    expected = reconstruct(tiny, ddim, settings(scale=1))
    for scale in (3.0, 7.5):
        torch.testing.assert_close(reconstruct(tiny, inv, settings(method, scale=scale, **params)), expected,
                                   atol=5e-5, rtol=1e-4)
    cond = tiny.encode_text(["a wolf"])
    ctx = ReplayContext(schedule=make_schedule(tiny.scheduler_config, 10), n_branches=1, source_branch=None,
                        output_branch=0, source_cond=cond, uncond=tiny.encode_text([""]),
                        prediction_type=tiny.prediction_type)
    assert get_inversion(method).replay(inv, ctx, make_config(get_inversion(method).config, {}, method)).uncond is cond


@pytest.mark.parametrize("steps_offset", [None, 0])
def test_npi_edit_is_diffusers_with_the_source_as_negative_prompt(tiny, wolf_frames, steps_offset):
    """NPI inverted and edited (plain editor) is ``StableDiffusionPipeline`` + ``DDIMScheduler``
    started from the inverted noise with ``negative_prompt=`` the source prompt (Miyake et al.
    2023, Sec. 3: the source prompt's embedding as the null text). One frame, 10 steps, guidance
    7.5, the model's steps_offset (1) and the reference codes' 0; measured relative difference
    2.9e-6 (the DDIM coefficients round differently, fp64 here and fp32 in diffusers)."""
    s = EditSettings(source_prompt="a wolf", target_prompt="a fox", steps=10, guidance=7.5, strength=1.0,
                     inversion="npi", steps_offset=steps_offset)
    inv = invert_frames(tiny, wolf_frames[:1], s)
    z = edit_latents(tiny, inv, s)
    with torch.no_grad():
        want = latent_edit(stable_diffusion(tiny, steps_offset), inv.noise, "a fox", 10, 7.5,
                           negative_prompt="a wolf")
    assert rel_error(z, want) <= 1e-5, rel_error(z, want)


def test_proxedit_inversion_guidance_lands_the_replay_on_the_source(tiny, wolf_frames):
    """With target = source the difference is 0, so nothing is edited: the reference's inversion
    guidance (recon_lr 1 below t = 400) puts every latent there on the inversion's, ending on z0."""
    inv = invert_frames(tiny, wolf_frames, settings("proxedit"))
    torch.testing.assert_close(reconstruct(tiny, inv, settings("proxedit")), inv.source, atol=1e-6, rtol=0)
