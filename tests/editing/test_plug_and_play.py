"""Plug-and-Play (videdit/editing/plug_and_play.py): feature and attention injection inside the
UNet on tiny-random, and its hooks removed afterwards."""

import dataclasses

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
    assert rel(z, inv.source) < rel(plain, inv.source)   # the injection pulls the edit towards the source


# --- the official code's algorithm and defaults (MichalGeyer/pnp-diffusers) ---------------------

NEGATIVE = "ugly, blurry, black, low res, unrealistic"   # config_pnp.yaml's negative_prompt


def test_pnp_defaults_are_the_official_ones(tiny):
    """``config_pnp.yaml`` (pnp_f_t 0.8, pnp_attn_t 0.5, 50 steps, guidance 7.5, its negative
    prompt), ``preprocess.py`` (DDIM inversion under "" through 999 steps) and ``pnp.py`` (the
    source features from the stored latents: a pinned source branch), read through
    ``configs/pnp.yaml``; the layers of ``pnp_utils.register_*_control_efficient`` on SD's names."""
    from tests.editing.attention_runs import preset_settings, sd_shaped
    from videdit.attention import choose_layers, match_modules
    from videdit.editing import EDITORS
    from videdit.editing.plug_and_play import PlugAndPlayConfig
    from videdit.pipeline import EditSettings

    assert EDITORS["plug_and_play"].pinned_source and EditSettings(editor="plug_and_play").pin_source
    s = preset_settings("pnp.yaml", "a photo of a pink toy horse on the beach")
    assert (s.steps, s.guidance, s.source_prompt, s.negative_prompt) == (50, 7.5, "", NEGATIVE)
    assert s.inversion == "ddim" and s.inversion_config.every_timestep and s.inversion_config.guidance == 1
    assert s.pin_source and (s.editor_config.feature_fraction, s.editor_config.attention_fraction) == (0.8, 0.5)
    unet = sd_shaped(tiny).unet
    res_dict = {1: [1, 2], 2: [0, 1, 2], 3: [0, 1, 2]}   # register_attention_control_efficient
    official = [f"up_blocks.{r}.attentions.{b}.transformer_blocks.0.attn1.processor" for r in res_dict
                for b in res_dict[r]]
    config = PlugAndPlayConfig()
    assert choose_layers(unet, config.attention_layers, "pnp", "attention_layers", cross=False) == official
    assert match_modules(unet, config.feature_layers[0]) == ["up_blocks.1.resnets.1.conv2"]


class _OfficialQK:
    """``pnp_utils.register_attention_control_efficient``'s self-attention, as a diffusers
    processor: in the injection steps the batch [source, uncond, cond] hands the source's
    queries and keys to both halves of the target."""

    def __init__(self, steps, state):
        self.steps, self.state = steps, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if self.state["i"] in self.steps:
            n = q.shape[0] // 3
            q[n:2 * n], q[2 * n:], k[n:2 * n], k[2 * n:] = q[:n], q[:n], k[:n], k[:n]
        q, k, v = (attn.head_to_batch_dim(t) for t in (q, k, v))
        out = attn.batch_to_head_dim(torch.bmm(attn.get_attention_scores(q, k), v))
        return attn.to_out[1](attn.to_out[0](out))


def _official_pnp(model, inv, target: str, negative: str, steps: int, guidance: float):
    """``pnp.py``'s ``PNP.sample_loop`` on a stored trajectory: each step the UNet sees
    [x*_t under "", x under the negative prompt, x under the target], the injections of
    ``pnp_utils`` within ``timesteps[:int(n * pnp_attn_t)]`` and ``[:int(n * pnp_f_t)]``, CFG
    on the last two rows and diffusers' DDIM step."""
    from diffusers import DDIMScheduler

    from videdit.attention import attention_processors

    unet = model.unet
    sched = DDIMScheduler.from_config(model.scheduler_config)
    sched.set_timesteps(steps)
    state = {"i": -1}
    qk_steps, conv_steps = range(int(steps * 0.5)), range(int(steps * 0.8))
    layers = [n for n in unet.attn_processors if n.endswith("attn1.processor")
              and (n.startswith("up_blocks.1.attentions.1") or n.startswith("up_blocks.1.attentions.2")
                   or n.startswith("up_blocks.2.") or n.startswith("up_blocks.3."))]
    procs = {**unet.attn_processors, **{n: _OfficialQK(qk_steps, state) for n in layers}}

    def conv(module, args, out):   # register_conv_control_efficient, on conv2's output
        if state["i"] in conv_steps:
            n = out.shape[0] // 3
            out = out.clone()
            out[n:2 * n], out[2 * n:] = out[:n], out[:n]
        return out

    text = model.encode_text(["", negative, target])                   # pnp_guidance_embeds, then text_embeds
    x = inv.trajectory[0]
    handle = unet.get_submodule("up_blocks.1.resnets.1.conv2").register_forward_hook(conv)
    try:
        with torch.no_grad(), attention_processors(unet, procs):
            for i, t in enumerate(sched.timesteps):
                state["i"] = i
                eps = unet(torch.cat([inv.trajectory[i], x, x]), t, encoder_hidden_states=text).sample
                _, u, c = eps.chunk(3)
                x = sched.step(u + guidance * (c - u), t, x).prev_sample
    finally:
        handle.remove()
    return x


def test_pnp_is_the_official_sample_loop(tiny, wolf_frames):
    """videdit's plug_and_play with its defaults (pinned source, "" unguided, both halves
    injected) is ``pnp.py``'s loop on the same stored inversion, to fp32 rounding."""
    from videdit.pipeline import EditSettings, invert_frames

    s = EditSettings(target_prompt="a robot wolf", negative_prompt=NEGATIVE, steps=10, editor="plug_and_play")
    inv = invert_frames(tiny, wolf_frames[:1], s)
    z = edit_latents(tiny, inv, s)
    ref = _official_pnp(tiny, inv, "a robot wolf", NEGATIVE, 10, 7.5)
    assert rel(z, ref) < 1e-5, rel(z, ref)
    replayed = edit_latents(tiny, inv, dataclasses.replace(s, source_branch="replay"))
    assert rel(replayed, ref) > 1e-3   # the source branch sampled from the noise drifts from x*_t


@pytest.mark.parametrize("inversion", ["ddim", "direct"])
def test_pinned_source_is_the_trajectory_under_the_empty_prompt(tiny, wolf_frames, inversion):
    """Every UNet call of the edit sees the source branch at ``trajectory[i]`` under "" (also
    with direct inversion, whose replay offsets the source branch), its decoder features are
    a direct UNet call's on (x*_t, ""), and pinning costs no UNet work beyond replaying: 3 rows
    a step, [target uncond, source, target cond], as the official pnp.py's [source, uncond, cond]
    (the source at guidance 1 runs no unconditional half: ``cond_only_source``)."""
    from videdit.pipeline import EditSettings, invert_frames

    s = EditSettings(source_prompt="a wolf", target_prompt="a robot wolf", steps=STEPS, editor="plug_and_play",
                     inversion=inversion)
    inv = invert_frames(tiny, wolf_frames[:1], s)
    empty = tiny.encode_text([""])[0]                                   # (L, D)
    conv = tiny.unet.get_submodule("up_blocks.1.resnets.1.conv2")
    calls, raw = [], []

    def seen_by_unet(module, args, kwargs):
        calls.append((int(args[1][0]), args[0].clone(), kwargs["encoder_hidden_states"].clone()))

    handles = [tiny.unet.register_forward_pre_hook(seen_by_unet, with_kwargs=True),
               conv.register_forward_hook(lambda m, args, out: raw.append(out.clone()))]   # runs before the editor's
    try:
        edit_latents(tiny, inv, s)
        pinned, features = list(calls), list(raw)
        calls.clear()
        replay = dataclasses.replace(s, source_branch="replay")   # direct: its offsets recorded then
        replay_inv = invert_frames(tiny, wolf_frames[:1], replay)
        calls.clear()
        edit_latents(tiny, replay_inv, replay)
        replayed = list(calls)
    finally:
        for h in handles:
            h.remove()
    rows = [sum(sample.shape[0] for _, sample, _ in run) for run in (pinned, replayed)]
    assert (len(pinned), len(replayed)) == (STEPS, STEPS) and rows == [3 * STEPS] * 2
    timesteps = s.schedule(tiny.scheduler_config).timesteps
    for i, (t, sample, text) in enumerate(pinned):
        assert t == int(timesteps[i])
        sample, text = sample.unflatten(0, (3, 1)), text.unflatten(0, (3, 1))   # (rows, F, ...)
        assert torch.equal(sample[1], inv.trajectory[i]), i
        assert torch.equal(text[1, 0], empty)                          # the source's conditional half: ""
        direct = []
        h = conv.register_forward_hook(lambda m, args, out: direct.append(out))
        try:
            with torch.no_grad():
                tiny.unet(inv.trajectory[i], t, encoder_hidden_states=empty[None])
        finally:
            h.remove()
        torch.testing.assert_close(features[i].unflatten(0, (3, 1))[1], direct[0], rtol=1e-5, atol=1e-5)
