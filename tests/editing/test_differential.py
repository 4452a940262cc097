"""Differential diffusion (videdit/editing/differential.py) on tiny-random with real frames: a
binary map is blended diffusion, a soft one releases pixels step by step."""

import pytest
import torch

from tests.editing.blending_runs import edit, from_step as _from_step, left_half


@pytest.fixture(scope="module")
def inverted(blending_inverted):
    return blending_inverted


def test_binary_differential_map_is_blended_diffusion(tiny, inverted):
    s, inv, _ = inverted("ddim")
    mask = left_half()
    assert torch.equal(edit(tiny, s, inv, "differential", mask=mask), edit(tiny, s, inv, "blended", mask=mask))


def test_differential_releases_a_pixel_when_the_steps_done_pass_one_minus_m(tiny, inverted):
    """A uniform map m holds everything on the source for the first N (1 - m) steps:
    m = 0.5 over 4 steps is plain sampling from trajectory[2]."""
    s, inv, _ = inverted("ddim")
    torch.testing.assert_close(edit(tiny, s, inv, "differential", mask=torch.full((8, 8), 0.5)),
                               _from_step(tiny, s, inv, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(edit(tiny, s, inv, "differential", mask=torch.full((8, 8), 0.75)),
                               _from_step(tiny, s, inv, 1), atol=1e-5, rtol=0)
    assert torch.equal(edit(tiny, s, inv, "differential", mask=torch.ones(8, 8)), edit(tiny, s, inv, "plain"))
    assert torch.equal(edit(tiny, s, inv, "differential", mask=torch.zeros(8, 8)), inv.source)
