"""Cross-image attention (videdit/editing/cross_image.py): structure queries read an appearance
image's keys and values, on tiny-random."""

import pytest
import torch

from tests.editing.attention_runs import plan_of, rel, run_plan, settings, with_probe
from videdit.errors import VideditError
from videdit.pipeline import edit_latents


@pytest.fixture(scope="module")
def inverted(attention_inverted):
    return attention_inverted


def test_cross_image_takes_keys_and_values_from_the_appearance(tiny, inverted, shared_data):
    s, inv, rec = inverted
    image = shared_data / "videos" / "car-turn" / "00000.png"
    s = settings(s, "cross_image", appearance=str(image), appearance_prompt="a jeep", start=0.0, end=1.0)
    plan = plan_of(tiny, inv, s)
    assert plan.x.shape[0] == 3 and plan.output_branch == 2 and plan.source_branch == 0
    layer = next(iter(plan.processors))
    plan, probe = with_probe(tiny, plan, layer)
    run_plan(tiny, inv, s, plan)
    for _, _, q, k, v in probe.seen:  # (halves, nb=3, fb, heads, T, d): output = (q structure, k/v appearance)
        assert torch.equal(q[:, 2], q[:, 0]) and torch.equal(k[:, 2], k[:, 1]) and torch.equal(v[:, 2], v[:, 1])
    z = edit_latents(tiny, inv, s)
    alone = edit_latents(tiny, inv, settings(s, "cross_image", start=0.0, end=1.0))
    assert rel(z, alone) > 1e-2
    with pytest.raises(VideditError, match="does not exist"):
        settings(s, "cross_image", appearance="no/such.png")
