"""MasaCtrl (videdit/editing/masactrl.py): the target's self-attention reads the source's keys and
values, within masks, on tiny-random."""

import pytest
import torch

from tests.editing.attention_runs import plan_of, rel, run_plan, settings, with_probe
from videdit.errors import VideditError
from videdit.pipeline import edit_latents


@pytest.fixture(scope="module")
def inverted(attention_inverted):
    return attention_inverted


def test_masactrl_target_uses_the_source_keys_and_values(tiny, inverted):
    s, inv, rec = inverted
    s = settings(s, "masactrl", start=0.4)
    plan = plan_of(tiny, inv, s)
    layer = "up_blocks.2.attentions.0.transformer_blocks.0.attn1.processor"
    assert set(plan.processors) == {layer, layer.replace("attentions.0", "attentions.1")}
    plan, probe = with_probe(tiny, plan, layer)
    run_plan(tiny, inv, s, plan)
    for step, _, q, k, v in probe.seen:  # each (halves, nb, fb, heads, T, d)
        active = step >= 2
        assert torch.equal(k[:, 1], k[:, 0]) == active and torch.equal(v[:, 1], v[:, 0]) == active, step
        assert not torch.equal(q[:, 1], q[:, 0])
    z = edit_latents(tiny, inv, s)
    plain = edit_latents(tiny, inv, settings(s, "plain"))
    assert rel(z, plain) > 1e-3


def test_masactrl_masks(tiny, inverted):
    s, inv, rec = inverted
    unmasked = edit_latents(tiny, inv, settings(s, "masactrl", start=0.0))
    full = edit_latents(tiny, inv, settings(s, "masactrl", start=0.0, mask=torch.ones(8, 8)))
    assert rel(full, unmasked) <= 1e-5      # all foreground: every query sees every source key
    half = torch.zeros(8, 8)
    half[:, :4] = 1
    masked = edit_latents(tiny, inv, settings(s, "masactrl", start=0.0, mask=half))
    assert rel(masked, unmasked) > 1e-4
    worded = edit_latents(tiny, inv, settings(s, "masactrl", start=0.2, mask_word="wolf", mask_factor=2))
    assert torch.isfinite(worded).all() and rel(worded, unmasked) > 1e-4
    # the default, 0, reads the maps at about 16x16 cells: here (8x8 latents) the full-size layers
    auto = edit_latents(tiny, inv, settings(s, "masactrl", start=0.2, mask_word="wolf"))
    torch.testing.assert_close(auto, edit_latents(tiny, inv, settings(s, "masactrl", start=0.2, mask_word="wolf",
                                                                       mask_factor=1)), rtol=0, atol=0)
    assert rel(auto, worded) > 1e-4
    with pytest.raises(VideditError, match="aspect ratio"):
        edit_latents(tiny, inv, settings(s, "masactrl", mask=torch.ones(4, 8)))
    with pytest.raises(VideditError, match="not a word"):
        edit_latents(tiny, inv, settings(s, "masactrl", mask_word="tiger"))
