"""EditSettings: the edit settings a method's reference fixes (steps, guidance, strength), the
edit's start step, the schedule's steps_offset and the pinned source branch, resolved once."""

import dataclasses

import pytest
import torch

from videdit.core.loop import Branches
from videdit.editing import EDITORS, EditPlan
from videdit.editing.registry import EditorSpec
from videdit.errors import VideditError
from videdit.inversion import INVERSIONS, get_inversion
from videdit.pipeline import EditSettings, edit_latents, invert_frames
from videdit.registry import EDIT_DEFAULTS


@dataclasses.dataclass(frozen=True)
class NoOptions:
    pass


def _two_branches(ctx, config):
    """A source branch (0) beside the edit (1), both from the inverted noise."""
    cond = torch.cat([ctx.source_cond, ctx.target_cond])
    return EditPlan(x=ctx.inversion.noise[None].expand(2, -1, -1, -1, -1).clone(),
                    branches=Branches(cond=cond, uncond=ctx.uncond.expand(2, -1, -1), guidance=(ctx.guidance,) * 2),
                    source_branch=0, output_branch=1)


def _editor(name, plan=_two_branches, **kw):
    return EditorSpec(name=name, config=NoOptions, summary=name, plan=plan, has_source_branch=True, **kw)


def test_unset_settings_take_the_editors_reference_then_the_inversions_then_the_global_default():
    ddim = get_inversion("ddim")
    inversion = dataclasses.replace(ddim, name="test-inv", edit_defaults={"steps": 100, "guidance": 3.0})
    with INVERSIONS.temporarily(inversion), EDITORS.temporarily(_editor("test-ed", edit_defaults={"guidance": 1.0,
                                                                                                   "strength": 0.8})):
        s = EditSettings(inversion="test-inv", editor="test-ed")
        assert (s.steps, s.guidance, s.strength, s.start_step) == (100, 1.0, 0.8, 20)
        s = EditSettings(inversion="test-inv", editor="plain")
        assert (s.steps, s.guidance, s.strength, s.start_step) == (100, 3.0, 1.0, 0)
        s = EditSettings(inversion="test-inv", editor="test-ed", steps=10, guidance=7.5, strength=0.55)
        assert (s.steps, s.guidance, s.strength, s.start_step) == (10, 7.5, 0.55, 5)   # int(10 * 0.55) = 5 kept
    s = EditSettings()
    assert (s.steps, s.guidance, s.strength, s.steps_offset) == tuple(EDIT_DEFAULTS.values()) == (50, 7.5, 1.0, None)
    assert EditSettings(inversion="edict").steps_offset == 0   # the reference's DDIM timesteps


@pytest.mark.parametrize("kw, message", [
    (dict(strength=0), r"strength must be in \(0, 1\], got 0"),
    (dict(strength=1.5), r"strength must be in \(0, 1\], got 1.5"),
    (dict(strength=0.05, steps=10), r"strength 0.05 of 10 steps leaves no step to run; raise strength or steps"),
    (dict(steps_offset=-1), r"steps_offset must be >= 0, got -1"),
    (dict(source_branch="frozen"), r"source_branch must be 'replay' or 'pinned', got 'frozen'"),
    (dict(source_branch="pinned"), r"source_branch='pinned' sets the editor's source branch, and editor 'plain' "
                                   r"runs none; use one of \["),
    (dict(steps="many"), r"steps must be a whole number, got 'many'$"),
    (dict(steps=4.5), r"steps must be a whole number, got 4.5$"),
    (dict(steps=True), r"steps must be a whole number, got True$"),
    (dict(seed="1"), r"seed must be a whole number, got '1'$"),
    (dict(guidance="high"), r"guidance must be a number, got 'high'$"),
    (dict(strength="half"), r"strength must be a number, got 'half'$"),
])
def test_settings_refuse_in_one_line(kw, message):
    with pytest.raises(VideditError, match=message):
        EditSettings(**kw)


def test_numbers_of_numpy_types_are_numbers():
    import numpy as np

    s = EditSettings(steps=np.int64(10), guidance=np.float32(4.0), seed=np.int32(3))
    assert (s.steps, float(s.guidance), s.seed) == (10, 4.0, 3)


def test_strength_starts_the_edit_later_from_the_same_trajectory(tiny, wolf_frames):
    """At strength 0.5 of 10 steps the record and the edit start at step 5; DDIM inversion
    runs from the clean latent up, so its kept steps are the full inversion's. Plain DDIM at
    guidance 1 then lands closer to the source than from step 0 (half the steps to drift)."""
    frames = wolf_frames[:1]
    errors, records = [], []
    for strength in (1.0, 0.5):
        s = EditSettings(source_prompt="a wolf", target_prompt="a wolf", steps=10, guidance=1, strength=strength)
        inv = invert_frames(tiny, frames, s)
        assert inv.start_step == s.start_step == (0 if strength == 1 else 5)
        z = edit_latents(tiny, inv, s)
        errors.append(float((z - inv.source).norm() / inv.source.norm()))
        records.append(inv)
    assert torch.equal(records[0].trajectory[5:], records[1].trajectory[5:])
    assert errors[1] < 0.5 * errors[0]


def test_steps_offset_moves_the_timesteps_and_the_cache_key(tiny, wolf_frames, tmp_path):
    from videdit.inversion import InversionCache

    cache = InversionCache(tmp_path)
    base = EditSettings(source_prompt="a wolf", steps=5)
    assert base.schedule(tiny.scheduler_config).timesteps.tolist() == [801, 601, 401, 201, 1]
    zero = dataclasses.replace(base, steps_offset=0)
    assert zero.schedule(tiny.scheduler_config).timesteps.tolist() == [800, 600, 400, 200, 0]
    a = invert_frames(tiny, wolf_frames[:1], base, cache=cache)
    b = invert_frames(tiny, wolf_frames[:1], zero, cache=cache)
    assert not b.cached and len(list(tmp_path.glob("*"))) == 2
    assert not torch.equal(a.noise, b.noise)


def test_a_pinned_source_branch_is_the_inversions_trajectory_at_every_step(tiny, wolf_frames):
    """With source_branch='pinned' the source branch's latents entering the UNet at step i are
    trajectory[i], and the edit is the same UNet work as the replay."""
    seen = {}

    def spy(module, args, kwargs):
        seen.setdefault(len(seen), args[0][0].clone())   # the source branch's (first) latent of each call

    with EDITORS.temporarily(_editor("test-two")):
        settings = {mode: EditSettings(source_prompt="a wolf", target_prompt="a fox", steps=4, guidance=1,
                                       editor="test-two", source_branch=mode) for mode in ("pinned", "replay")}
        inv = invert_frames(tiny, wolf_frames[:1], settings["pinned"])
        handle = tiny.unet.register_forward_pre_hook(spy, with_kwargs=True)
        try:
            edit_latents(tiny, inv, settings["pinned"])
            pinned, seen = dict(seen), {}
            edit_latents(tiny, inv, settings["replay"])
        finally:
            handle.remove()
    assert len(pinned) == len(seen) == 4
    for i in range(4):
        assert torch.equal(pinned[i], inv.trajectory[i][0].to(pinned[i]))
    assert not torch.equal(seen[3], inv.trajectory[3][0])   # the replay drifts away from it


def test_an_editor_may_start_sampling_at_its_own_step(tiny, wolf_frames):
    starts = []

    def from_noise(ctx, config):
        plan = _two_branches(ctx, config)
        return dataclasses.replace(plan, x=torch.randn_like(plan.x), start_step=3, source_branch=None)

    def spy(module, args, kwargs):
        starts.append(int(args[1].flatten()[0]))

    spec = EditorSpec(name="test-own-start", config=NoOptions, summary="", plan=from_noise)
    with EDITORS.temporarily(spec):
        s = EditSettings(source_prompt="a wolf", target_prompt="a fox", steps=5, guidance=1, editor="test-own-start")
        inv = invert_frames(tiny, wolf_frames[:1], s)
        handle = tiny.unet.register_forward_pre_hook(spy, with_kwargs=True)
        try:
            edit_latents(tiny, inv, s)
        finally:
            handle.remove()
    assert starts == [201, 1]   # timesteps [801, 601, 401, 201, 1] from step 3
