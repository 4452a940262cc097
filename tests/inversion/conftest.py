"""Fixtures shared by the inversions' tests."""

import dataclasses

import pytest
import torch

from videdit.core.loop import Branches, StepCallback
from videdit.editing import EDITORS, EditorSpec, EditPlan


# a two-branch editor (source 0, target 1) that records every step's latents
@pytest.fixture
def two_branch():
    seen = []

    class Record(StepCallback):
        def on_step_end(self, ctx, x):
            seen.append((ctx.step, x.clone()))
            return x

    @dataclasses.dataclass(frozen=True)
    class NoOptions:
        pass

    def plan(ctx, config):
        x = ctx.inversion.noise[None].expand(2, -1, -1, -1, -1).clone()  # (2, F, C, h, w)
        cond = torch.cat([ctx.source_cond, ctx.target_cond])
        return EditPlan(x=x, branches=Branches(cond=cond, uncond=ctx.uncond.expand(2, -1, -1),
                                               guidance=(ctx.guidance, ctx.guidance)),
                        callbacks=[Record()], output_branch=1, source_branch=0)

    spec = EditorSpec(name="_two_branch_test", config=NoOptions, summary="a test", plan=plan, has_source_branch=True)
    with EDITORS.temporarily(spec):
        yield "_two_branch_test", seen
