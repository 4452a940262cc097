"""Plug-and-Play (videdit/editing/plug_and_play.py): feature and attention injection inside the
UNet on tiny-random, and its hooks removed afterwards."""

import pytest
import torch

from tests.editing.attention_runs import STEPS, plan_of, rel, run_plan, settings
from videdit.attention import module_hooks
from videdit.pipeline import edit_latents


@pytest.fixture(scope="module")
def inverted(attention_inverted):
    return attention_inverted


def test_pnp_injects_features_and_removes_its_hooks(tiny, inverted):
    s, inv, rec = inverted
    s = settings(s, "plug_and_play", feature_fraction=0.6, attention_fraction=0.4)
    plan = plan_of(tiny, inv, s)
    assert list(plan.hooks) == ["up_blocks.1.resnets.1.conv2"]
    conv = tiny.unet.get_submodule("up_blocks.1.resnets.1.conv2")
    seen = []

    def probe(module, args, out):  # runs after the editor's hook: sees its output
        seen.append((plan.info.step, out.unflatten(0, (2, 2, 1)).clone()))

    with pytest.raises(RuntimeError, match="boom"):
        with module_hooks(tiny.unet, plan.hooks):
            assert len(conv._forward_hooks) == 1
            raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in tiny.unet.modules())
    run_plan(tiny, inv, s, plan, probes={"up_blocks.1.resnets.1.conv2": probe})
    assert not any(m._forward_hooks for m in tiny.unet.modules())
    assert [i for i, _ in seen] == list(range(STEPS))
    for step, out in seen:  # (halves, nb, fb, C, h, w)
        assert torch.equal(out[:, 1], out[:, 0]) == (step < 3), step  # int(0.6 * 5) = 3
    z = edit_latents(tiny, inv, s)
    plain = edit_latents(tiny, inv, settings(s, "plain"))
    assert rel(z, rec) < rel(plain, rec)   # the injection pulls the edit towards the source
