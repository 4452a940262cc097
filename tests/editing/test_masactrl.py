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


# --- the official code's algorithm and defaults (TencentARC/MasaCtrl) ----------------------------

def test_masactrl_defaults_are_the_official_real_image_recipe(tiny):
    """``playground_real.ipynb``: source prompt "", DDIM inversion at guidance 7.5, 50 steps at
    7.5 on ``DDIMScheduler(...)``'s default steps_offset 0, the source replayed (its
    ``ref_intermediate_latents`` commented out), ``MutualSelfAttentionControl(STEP=4,
    LAYER=10)``: from step 4 of 50, on the transformer blocks from the 10th of the 16 that SD's
    UNet runs (``regiter_attention_editor_diffusers`` counts them as they run)."""
    from tests.editing.attention_runs import preset_settings, run_order, sd_shaped
    from videdit.attention import choose_layers
    from videdit.editing import EDITORS
    from videdit.editing.control import step_index

    assert "TencentARC/MasaCtrl" in EDITORS["masactrl"].reference
    s = preset_settings("masactrl.yaml", "a photo of a running corgi")
    assert (s.source_prompt, s.steps, s.guidance, s.steps_offset) == ("", 50, 7.5, 0)
    assert s.inversion == "ddim" and s.inversion_config.guidance == 7.5 and not s.pin_source
    timesteps = s.schedule(tiny.scheduler_config).timesteps
    assert (int(timesteps[0]), int(timesteps[-1])) == (980, 0)
    assert step_index(s.editor_config.start, 50) == 4
    unet = sd_shaped(tiny).unet
    order = run_order(unet)
    assert len(order) == 16
    assert choose_layers(unet, s.editor_config.layers, "masactrl", "layers", cross=False) == order[10:]


class _OfficialMutual:
    """``MutualSelfAttentionControl.forward`` as a diffusers processor: within the steps, every
    query of the batch [uncond src, uncond tgt, cond src, cond tgt] attends to the keys and
    values of its half's source row."""

    def __init__(self, steps, state):
        self.steps, self.state = steps, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if self.state["i"] in self.steps:
            k, v = k[[0, 0, 2, 2]], v[[0, 0, 2, 2]]
        q, k, v = (attn.head_to_batch_dim(t) for t in (q, k, v))
        out = attn.batch_to_head_dim(torch.bmm(attn.get_attention_scores(q, k), v))
        return attn.to_out[1](attn.to_out[0](out))


def test_masactrl_is_the_official_real_image_pipeline(tiny, wolf_frames):
    """configs/masactrl.yaml (here with 13 steps) is ``MasaCtrlPipeline.invert`` then its
    ``__call__`` with ``MutualSelfAttentionControl`` (start_step = 0.08 of the steps), both
    written out as the official ``next_step``/``step`` formulas, to fp32 rounding."""
    from diffusers import DDIMScheduler

    from tests.editing.attention_runs import preset_settings
    from videdit.attention import attention_processors
    from videdit.pipeline import invert_frames

    n, target = 13, "a robot wolf"
    s = preset_settings("masactrl.yaml", target, steps=n)
    inv = invert_frames(tiny, wolf_frames[:1], s)
    z = edit_latents(tiny, inv, s)

    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False)
    sched.set_timesteps(n)
    acp, final, ratio = sched.alphas_cumprod, sched.final_alpha_cumprod, 1000 // n
    unet, empty, tgt = tiny.unet, *tiny.encode_text(["", target]).chunk(2)
    with torch.no_grad():
        x = inv.source.clone()
        for t in reversed(sched.timesteps):                               # MasaCtrlPipeline.invert("", 7.5)
            u, c = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([empty, empty])).sample.chunk(2)
            eps = u + 7.5 * (c - u)
            prev = min(int(t) - ratio, 999)
            a, a_next = (acp[prev] if prev >= 0 else final), acp[t]
            x = a_next ** 0.5 * (x - (1 - a) ** 0.5 * eps) / a ** 0.5 + (1 - a_next) ** 0.5 * eps
        torch.testing.assert_close(inv.noise, x, rtol=0, atol=1e-5)
        state = {"i": -1}
        layers = [name for name in unet.attn_processors if name.startswith("up_blocks.2") and "attn1" in name]
        procs = {**unet.attn_processors, **{name: _OfficialMutual(range(int(0.08 * n), n), state) for name in layers}}
        text = torch.cat([empty, empty, empty, tgt])                       # [uncond] * 2, then ["", target]
        x = torch.cat([inv.noise, inv.noise])
        with attention_processors(unet, procs):
            for i, t in enumerate(sched.timesteps):                        # MasaCtrlPipeline.__call__
                state["i"] = i
                u, c = unet(torch.cat([x, x]), t, encoder_hidden_states=text).sample.chunk(2)
                eps = u + 7.5 * (c - u)
                prev = int(t) - ratio
                a, a_prev = acp[t], (acp[prev] if prev > 0 else final)
                x = a_prev ** 0.5 * (x - (1 - a) ** 0.5 * eps) / a ** 0.5 + (1 - a_prev) ** 0.5 * eps
    assert rel(z, x[1:]) < 1e-5, rel(z, x[1:])
