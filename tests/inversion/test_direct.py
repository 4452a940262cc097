"""Direct inversion (videdit/inversion/direct.py): its offsets go to the source branch, or to the
output branch when an editor has no source branch; that replay is diffusers' pipeline adding the
offsets after each step."""

import dataclasses

import pytest
import torch

from tests.inversion.exact_runs import PROMPT, rel_error, replay_context, settings_for
from tests.peers import latent_edit, stable_diffusion
from videdit.core.loop import Branches, denoise
from videdit.core.schedule import make_schedule
from videdit.inversion import INVERSIONS
from videdit.pipeline import EditSettings, edit_latents, invert_frames


def test_direct_offsets_go_to_the_source_branch_only(tiny, wolf_frames, two_branch):
    name, seen = two_branch
    s = settings_for("direct")
    inv = invert_frames(tiny, wolf_frames, s)
    out = edit_latents(tiny, inv, dataclasses.replace(s, editor=name))
    assert [i for i, _ in seen] == list(range(10))
    for i, x in seen:  # the source branch is back on the inversion trajectory after every step
        assert rel_error(x[0], inv.trajectory[i + 1]) <= 1e-4
    # the target branch is plain guided DDIM from the same noise, uncorrected
    schedule = make_schedule(tiny.scheduler_config, 10)
    cond, uncond = tiny.encode_text([PROMPT, ""]).chunk(2)
    ddim = denoise(tiny.unet, inv.noise[None], schedule, Branches(cond=cond, uncond=uncond, guidance=(7.5,)))[0]
    assert rel_error(out, ddim) <= 1e-4
    assert rel_error(out, inv.source) > 1e-2
    # the authors' "add target" variant offsets both branches: the identity edit is then exact
    add_target = dataclasses.replace(s, editor=name, inversion_params={**s.inversion_params, "add_target": True})
    assert rel_error(edit_latents(tiny, inv, add_target), inv.source) <= 1e-4


def test_direct_without_a_source_branch_corrects_the_output_branch(tiny, wolf_frames):
    s = settings_for("direct")
    inv = invert_frames(tiny, wolf_frames, s)
    (cb,) = INVERSIONS["direct"].replay(inv, replay_context(tiny), INVERSIONS["direct"].config(guidance=7.5)).callbacks
    assert cb.branches == (0,)
    assert inv.extras["offsets"].shape == (10, 2, 4, 8, 8)
    assert inv.unet_evals == 10 + 2 * 10  # DDIM inversion at guidance 1, then the recorded guided pass


@pytest.mark.parametrize("steps_offset", [None, 0])
def test_direct_replay_is_diffusers_adding_the_offsets(tiny, wolf_frames, steps_offset):
    """Direct inversion's replay (plain editor: the offsets go to its one branch) is
    ``StableDiffusionPipeline`` + ``DDIMScheduler`` from the inverted noise with a
    ``callback_on_step_end`` adding step i's recorded offset to the latents (Ju et al. 2024,
    Alg. 1). One frame, 10 steps, guidance 7.5, target prompt != source, the model's
    steps_offset (1) and the reference codes' 0; measured relative difference 3.5e-6 (the DDIM
    coefficients round differently, fp64 here and fp32 in diffusers)."""
    s = EditSettings(source_prompt=PROMPT, target_prompt="a fox", steps=10, guidance=7.5, strength=1.0,
                     inversion="direct", steps_offset=steps_offset)
    inv = invert_frames(tiny, wolf_frames[:1], s)
    z = edit_latents(tiny, inv, s)
    offsets = inv.extras["offsets"]                                      # (N, 1, C, h, w) float64

    def add_offset(pipe, i, t, tensors):
        return {"latents": (tensors["latents"].double() + offsets[i]).float()}

    with torch.no_grad():
        want = latent_edit(stable_diffusion(tiny, steps_offset), inv.noise, "a fox", 10, 7.5,
                           callback_on_step_end=add_offset)
        plain = latent_edit(stable_diffusion(tiny, steps_offset), inv.noise, "a fox", 10, 7.5)
    assert rel_error(z, want) <= 1e-5, rel_error(z, want)
    assert rel_error(z, plain) > 1e-2   # the offsets matter
