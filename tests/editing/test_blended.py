"""Blended latent diffusion (videdit/editing/blended.py) on tiny-random with real frames."""

import pytest
import torch

from tests.editing.blending_runs import edit, left_half


@pytest.fixture(scope="module")
def inverted(blending_inverted):
    return blending_inverted


def test_blend_until_frees_the_last_steps(tiny, inverted):
    s, inv, _ = inverted("ddim")
    mask = left_half()
    full, part = edit(tiny, s, inv, "blended", mask=mask), edit(tiny, s, inv, "blended", mask=mask, blend_until=0.5)
    out = (mask == 0).expand_as(full)
    assert torch.equal(full[out], inv.source[out]) and not torch.equal(part[out], inv.source[out])
    assert torch.equal(edit(tiny, s, inv, "blended", mask=mask, blend_until=0.0), edit(tiny, s, inv, "plain"))
