"""Editors declare whether they run a source branch; their plans agree, for every editor."""

import pytest

from tests.families import runs_on
from videdit.core import make_schedule
from videdit.editing import EDITORS, EditContext
from videdit.pipeline import EditSettings, invert_frames

SOURCE, TARGET = "a wolf in a forest", "a robot wolf in a forest"


@pytest.mark.parametrize("editor", runs_on(EDITORS))
def test_the_declared_source_branch_is_the_plans(tiny, wolf_frames, editor):
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2, editor=editor)
    inv = invert_frames(tiny, wolf_frames[:1], s)
    src, tgt, unc = tiny.encode_text([SOURCE, TARGET, ""]).chunk(3)
    ctx = EditContext(model=tiny, inversion=inv, schedule=make_schedule(tiny.scheduler_config, 2), source_cond=src,
                      target_cond=tgt, uncond=unc, guidance=7.5, source_prompt=SOURCE, target_prompt=TARGET)
    plan = s.editor_spec.plan(ctx, s.editor_config)
    assert (plan.source_branch is not None) == EDITORS[editor].has_source_branch
