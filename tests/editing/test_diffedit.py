"""DiffEdit (videdit/editing/diffedit.py) on tiny-random with real frames."""

import pytest
import torch

from tests.editing.blending_runs import edit, from_step as _from_step


@pytest.fixture(scope="module")
def inverted(blending_inverted):
    return blending_inverted


def test_diffedit_starts_the_edit_at_the_encode_ratio(tiny, inverted):
    s, inv, _ = inverted("ddim")
    everywhere = torch.ones(8, 8)
    torch.testing.assert_close(edit(tiny, s, inv, "diffedit", mask=everywhere, encode_ratio=0.5),
                               _from_step(tiny, s, inv, 2), atol=1e-5, rtol=0)
    assert torch.equal(edit(tiny, s, inv, "diffedit", mask=everywhere, encode_ratio=1.0), edit(tiny, s, inv, "plain"))


def test_diffedit_automatic_mask_edits_part_of_the_frame(tiny, inverted):
    s, inv, rec = inverted("ddim")
    z = edit(tiny, s, inv, "diffedit", n_samples=3)
    kept = (z - inv.source).abs().amax(1) == 0                  # (F, h, w) pixels left as the source
    assert 0.3 < float(kept.float().mean()) < 0.97
