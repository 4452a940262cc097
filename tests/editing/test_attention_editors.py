"""What the attention editors (Prompt-to-Prompt, Plug-and-Play, MasaCtrl, cross-image attention)
share, tested across them: explicit softmax only where maps are read, and frame batches that do not
change the edit. Each editor's own tests are in its file (test_prompt_to_prompt.py, ...)."""

import dataclasses

import pytest
import torch

from tests.editing.attention_runs import SOURCE, TARGET, plan_of, settings
from videdit.attention import layer_grids
from videdit.pipeline import EditSettings, edit_latents, invert_frames


@pytest.fixture(scope="module")
def inverted(attention_inverted):
    return attention_inverted


def test_explicit_softmax_only_where_maps_are_read(tiny, inverted):
    s, inv, _ = inverted
    unet = tiny.unet
    grids = layer_grids(unet, (8, 8))
    cross = {n for n in unet.attn_processors if n.endswith("attn2.processor")}
    small = {n for n, (h, w) in grids.items() if n.endswith("attn1.processor") and h * w <= 16}
    assert small and len(small) < len(grids) - len(cross)

    def explicit(plan):
        return {n for n, p in plan.processors.items() if any(m.needs_probs for m in p.modules)}

    p2p = plan_of(tiny, inv, settings(s, "prompt_to_prompt", self_replace_max_tokens=16))
    assert set(p2p.processors) == cross | small
    assert explicit(p2p) == cross      # self-attention maps are replaced through q/k: fused
    for editor in ("plug_and_play", "masactrl"):   # cross_image contrasts its maps: test_cross_image.py
        plan = plan_of(tiny, inv, settings(s, editor))
        assert plan.processors and not explicit(plan), editor
        assert all(n.endswith("attn1.processor") for n in plan.processors), editor
    blend = plan_of(tiny, inv, settings(s, "prompt_to_prompt", blend_words=["wolf"], blend_factor=2))
    assert explicit(blend) == cross


@pytest.mark.parametrize("editor,params", [
    ("prompt_to_prompt", {"blend_words": ["wolf"], "blend_factor": 2, "blend_start": 0.0}),
    ("masactrl", {"mask_word": "wolf", "mask_factor": 2, "start": 0.0}),
    ("plug_and_play", {}),
])
def test_frame_batches_do_not_change_the_edit(tiny, wolf_frames, editor, params):
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, editor=editor, editor_params=params)
    inv = invert_frames(tiny, wolf_frames, s)   # two frames: per-frame maps and masks, one or two per UNet call
    one, two = (edit_latents(tiny, inv, dataclasses.replace(s, batch_size=b)) for b in (1, 2))
    # float rounding of other batch shapes: measured 2.1e-5 for plug_and_play (calls of 3 rows against
    # 6), 0 with the UNet in float64
    torch.testing.assert_close(one, two, rtol=0, atol=5e-5)
