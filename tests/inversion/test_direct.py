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
from videdit.errors import VideditError
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


def test_offsets_taken_in_the_edit_are_the_recorded_ones(tiny, wolf_frames):
    """``offsets=in_edit``: the inversion is DDIM's alone (10 UNet evaluations per frame, nothing
    recorded, the same trajectory); prompt-to-prompt's edit equals the recorded offsets' within
    float rounding (measured relative difference 4.8e-6)."""
    s = dataclasses.replace(settings_for("direct"), target_prompt="a fox", editor="prompt_to_prompt")
    in_edit = dataclasses.replace(s, inversion_params={**s.inversion_params, "offsets": "in_edit"})
    inv, inv_e = invert_frames(tiny, wolf_frames, s), invert_frames(tiny, wolf_frames, in_edit)
    assert (inv.unet_evals, inv_e.unet_evals, sorted(inv_e.extras)) == (30, 10, [])
    assert torch.equal(inv.trajectory, inv_e.trajectory)
    assert rel_error(edit_latents(tiny, inv_e, in_edit), edit_latents(tiny, inv, s)) <= 5e-5


@pytest.mark.parametrize("add_target", [False, True])
def test_offsets_taken_in_the_edit_put_the_source_on_the_trajectory(tiny, wolf_frames, two_branch, add_target):
    """The source branch is on z*_{i+1} after every step, to the last bit; with ``add_target`` the
    identity edit is the reconstruction (as with the recorded offsets: within 1e-4), without it
    the target branch is plain guided DDIM from the noise, as with the recorded offsets."""
    name, seen = two_branch
    params = {"offsets": "in_edit", "add_target": add_target}
    s = settings_for("direct", inversion_params=params, editor=name)
    inv = invert_frames(tiny, wolf_frames, s)
    out = edit_latents(tiny, inv, s)
    assert [i for i, _ in seen] == list(range(10))
    assert all(torch.equal(x[0], inv.trajectory[i + 1]) for i, x in seen)
    recorded = dataclasses.replace(s, inversion_params={**s.inversion_params, "offsets": "recorded"})
    assert rel_error(out, edit_latents(tiny, invert_frames(tiny, wolf_frames, recorded), recorded)) <= 5e-5
    assert (rel_error(out, inv.source) <= 1e-4) == add_target


def test_offsets_in_the_edit_need_a_source_branch():
    with pytest.raises(VideditError, match="^inversion 'direct' with these options works on the editor's source "
                                           "branch, and editor 'plain' runs none; use one of .*prompt_to_prompt"):
        settings_for("direct", inversion_params={"offsets": "in_edit"})
    with pytest.raises(VideditError, match="^direct offsets must be 'recorded' .* or 'in_edit' .*got 'later'$"):
        settings_for("direct", inversion_params={"offsets": "later"})


@pytest.mark.parametrize("kw", [{"editor": "plug_and_play"}, {"editor": "masactrl", "source_branch": "pinned"}])
def test_an_editor_pinning_its_source_gets_the_offsets_in_the_edit(tiny, wolf_frames, kw, monkeypatch):
    """Recorded offsets would only move the source branch, which pinning puts on the trajectory:
    no recorded pass (10 UNet evaluations per frame, not 30), and the same edit as with them
    (measured relative difference 0 for both)."""
    s = dataclasses.replace(settings_for("direct", **kw), target_prompt="a fox")
    assert s.inversion_config.offsets == "in_edit"
    inv = invert_frames(tiny, wolf_frames, s)
    assert inv.unet_evals == 10
    monkeypatch.setitem(INVERSIONS._entries, "direct", dataclasses.replace(INVERSIONS["direct"], pinned_config=None))
    old = dataclasses.replace(settings_for("direct", **kw), target_prompt="a fox")
    assert old.inversion_config.offsets == "recorded"
    want = edit_latents(tiny, invert_frames(tiny, wolf_frames, old), old)
    assert rel_error(edit_latents(tiny, inv, s), want) <= 1e-6


def test_an_inversion_without_recorded_offsets_is_refused_by_an_edit_that_asks_for_them(tiny, wolf_frames):
    s = settings_for("direct", editor="prompt_to_prompt", inversion_params={"offsets": "in_edit"})
    inv = invert_frames(tiny, wolf_frames, s)
    recorded = dataclasses.replace(s, inversion_params={"guidance": 7.5})
    with pytest.raises(VideditError, match=r"^this direct inversion took its offsets in the edit .*invert again"):
        edit_latents(tiny, inv, recorded)
