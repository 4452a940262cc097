"""TokenFlow propagation: nearest tokens by cosine similarity, the blend of the two nearest
keyframes' outputs on a hand-made case, and the source branch it needs."""

import math
from pathlib import Path

import pytest
import torch

from videdit.attention import AttnCall
from videdit.core import CallInfo
from videdit.editing import EDITORS
from videdit.errors import VideditError
from videdit.pipeline import EditSettings, edit_latents, invert_frames
from videdit.video import Window
from videdit.video.tokenflow import (PivotalPropagation, TokenFlowConfig, TokenFlowPropagation, code_weights,
                                     nearest_tokens, paper_weights)

from tests.video.clips import SOURCE, TARGET


def test_nearest_tokens_use_cosine_similarity():
    gen = torch.Generator().manual_seed(0)
    keys = torch.eye(6)[torch.randperm(6, generator=gen)] * torch.rand(6, 1, generator=gen).add(0.5)
    perm = torch.randperm(6, generator=gen)
    feats = keys[perm] * 7.0 + 0.01 * torch.rand(6, 6, generator=gen)   # scaled, slightly perturbed rows
    assert torch.equal(nearest_tokens(feats, keys), perm)


def test_tokenflow_propagation_on_a_hand_made_case():
    """Window of 5 frames, keyframes 0 and 4, one head, T = 4 tokens, two branches (0 = source).
    Frame 1's source tokens are keyframe 0's in order p, frame 3's keyframe 4's in order r;
    each must take 3/4 of its nearer keyframe's outputs at those tokens and 1/4 of the other's
    at the matching tokens, in the edit branch only."""
    layer, T = "up_blocks.2.attentions.0.transformer_blocks.0.attn1.processor", 4
    tf = TokenFlowPropagation([layer], [0, 4], [0, 4], range(0, 5), source=0, persistent={})
    info = CallInfo(n_branches=2, guided=False, latent_size=(2, 2))
    call = AttnCall(layer=layer, cross=False, info=info, heads=1, tokens=T)
    eye = torch.eye(T)
    kf_feats = torch.stack([eye, eye[[2, 0, 3, 1]]])               # (2 keyframes, T, d): tokens e_s, e_q(s)
    kf_out = torch.randn(2, 2, T, 3)                                # (nb, keyframes, T, C)

    def run(frames, feats, out):
        info.frames, info.batch = frames, 0 if frames == (0, 4) else 1
        k = torch.stack([feats, feats]).flatten(0, 1)[:, None]      # (nb * fb, 1 head, T, d)
        tf.qkv(call, None, k, k)
        return tf.output(call, out.flatten(0, 1)).view_as(out)

    kept = run((0, 4), kf_feats, kf_out)
    assert torch.equal(kept, kf_out)                                # keyframes are left alone
    p, r = torch.tensor([3, 1, 0, 2]), torch.tensor([1, 2, 0, 3])
    feats = torch.stack([eye[p], eye[[2, 0, 3, 1]][r]])             # frames 1 and 3
    mine = torch.randn(2, 2, T, 3)
    got = run((1, 3), feats, mine)
    q = torch.tensor([2, 0, 3, 1])                                  # keyframe 4's token s is e_q(s)
    qinv = torch.argsort(q)
    torch.testing.assert_close(got[1, 0], 0.75 * kf_out[1, 0, p] + 0.25 * kf_out[1, 1, qinv[p]])
    torch.testing.assert_close(got[1, 1], 0.25 * kf_out[1, 0, q[r]] + 0.75 * kf_out[1, 1, r])
    assert torch.equal(got[0], mine[0])                             # the source branch keeps its own


def test_tokenflow_needs_a_source_branch(tiny, clip):
    """Declared: the settings refuse an editor without one, naming those with one."""
    assert EDITORS.having("has_source_branch") == ["cross_image", "masactrl", "pix2pix_zero", "plug_and_play",
                                                   "prompt_to_prompt"]
    with pytest.raises(VideditError, match="reads the editor's source branch, and editor 'plain' runs none; use one "
                                           "of .*prompt_to_prompt"):
        EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2,
                     temporal={"keyframes": {}, "tokenflow": {"scope": "window", "features": "keys"}})
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2, editor="prompt_to_prompt",
                     temporal={"keyframes": {"every": 1}, "tokenflow": {"scope": "window", "features": "keys"}})
    z = edit_latents(tiny, invert_frames(tiny, clip[:2], s), s)
    assert z.shape == (2, 4, 8, 8) and torch.isfinite(z).all()


# --- the official algorithm (scope clip): run_tokenflow_pnp.py, tokenflow_utils.py ------------------------------

OFFICIAL = {"tokenflow": {"batch_size": 4}}   # two batches of the 8-frame clip
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def official_edit(tiny, clip, seed=0, steps=3, **tokenflow):
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=steps, editor="plug_and_play", seed=seed,
                     temporal={"tokenflow": {"batch_size": 4, **tokenflow}})
    stack = s.temporal_stack()
    z = edit_latents(tiny, invert_frames(tiny, clip, s), s, temporal=stack)
    return z, stack.modules[0]


def test_pivots_change_between_steps_and_batches_and_repeat_with_the_seed(tiny, clip):
    """One random frame of each batch of 4 at every step, from the edit's seed: the same seed
    draws the same pivots and gives the same edit, another seed other pivots."""
    z, tf = official_edit(tiny, clip, steps=6)
    drawn = [tf.pivots.drawn[i] for i in range(6)]
    assert drawn == [(0, 7), (1, 4), (3, 7), (3, 7), (1, 7), (1, 6)]
    assert all(0 <= a < 4 <= b < 8 for a, b in drawn)                     # one in each batch
    assert len(set(drawn)) > 1 and len({a for a, _ in drawn}) > 1           # they change between steps
    assert any(a != b - 4 for a, b in drawn)                                # and between batches
    again, tf_again = official_edit(tiny, clip, steps=6)
    assert [tf_again.pivots.drawn[i] for i in range(6)] == drawn
    torch.testing.assert_close(again, z, rtol=0, atol=0)
    _, other = official_edit(tiny, clip, seed=1, steps=6)
    assert [other.pivots.drawn[i] for i in range(6)] != drawn


def test_the_pivotal_pass_runs_first_and_its_output_is_dropped(tiny, clip, monkeypatch):
    """Per step the UNet sees the 2 pivots, then all 8 frames, each in 3 rows (the target's two
    halves and the source's conditional half, as the official [source, uncond, cond]): 30 rows.
    In the pivotal pass every self-attention layer's context is both pivots' tokens; after it,
    each frame's own (its output is replaced by the pivots')."""
    import videdit.attention.processor as processor

    rows, contexts, sdpa = [], set(), processor.F.scaled_dot_product_attention
    text_tokens = tiny.encode_text([""]).shape[1]

    def count(module, args, kwargs):
        rows.append(args[0].shape[0])

    def attention(q, k, v, **kw):   # (B, heads, T, d): rows, query tokens, key tokens
        if k.shape[-2] != text_tokens:
            contexts.add((q.shape[0], k.shape[-2] // q.shape[-2]))
        return sdpa(q, k, v, **kw)

    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2, editor="plug_and_play", temporal=OFFICIAL)
    inv = invert_frames(tiny, clip, s)
    monkeypatch.setattr(processor.F, "scaled_dot_product_attention", attention)
    handle = tiny.unet.register_forward_pre_hook(count, with_kwargs=True)
    try:
        edit_latents(tiny, inv, s)
    finally:
        handle.remove()
    assert rows == [6, 24] * 2
    assert contexts == {(8, 2), (32, 1)}   # the processors see 2 halves x 2 branches (CallInfo.to_full)


def test_every_pivot_attends_to_all_pivots():
    """In the pivotal pass each pivot's keys and values are all 3 pivots' (T = 4 tokens each),
    per guidance half and branch; the source branch (0) attends to itself, its keys repeated."""
    layer, T = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor", 4
    tf = PivotalPropagation([layer], TokenFlowConfig(), source=0, norms=None)
    info = CallInfo(n_branches=2, guided=True, latent_size=(2, 2), frames=(1, 9, 20), pivotal=True)
    call = AttnCall(layer=layer, cross=False, info=info, heads=1, tokens=T)
    k, v = torch.randn(12, 1, T, 2), torch.randn(12, 1, T, 2)              # (halves * nb * P, heads, T, d)
    q2, k2, v2 = tf.qkv(call, k, k, v)
    assert k2.shape == v2.shape == (12, 1, 3 * T, 2)                        # context: 3 pivots x 4 tokens
    ks, k2s, v2s, vs = call.split(k), call.split(k2), call.split(v2), call.split(v)
    for h in range(2):
        for j in range(3):
            torch.testing.assert_close(k2s[h, 1, j, 0], ks[h, 1, :, 0].flatten(0, 1))   # all pivots, edit
            torch.testing.assert_close(v2s[h, 1, j, 0], vs[h, 1, :, 0].flatten(0, 1))
            torch.testing.assert_close(k2s[h, 0, j, 0], ks[h, 0, j, 0].repeat(3, 1))     # itself, source


def test_the_clip_scope_needs_the_whole_clip_in_one_window(tiny, clip):
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2, editor="plug_and_play", temporal=OFFICIAL)
    inv = invert_frames(tiny, clip[:4], s)
    with pytest.raises(VideditError, match=r"needs the whole clip in one window; this window holds frames 0-3: edit "
                                           r"with a window of at least the clip's frames \(--window\), or set "
                                           r"tokenflow scope: window"):
        edit_latents(tiny, inv, s, window=Window(0, 4, clip[:4], last=False))
    with pytest.raises(VideditError, match="scope 'clip' draws its own pivots.*set tokenflow scope: window"):
        EditSettings(editor="plug_and_play", temporal={"keyframes": {}, "tokenflow": {}})


def test_nearest_neighbours_are_found_on_the_source_norm1_states(tiny, clip):
    """The features matched on are the block's norm1 output (source branch, conditional half),
    as the official block's batch_cosine_sim(norm_hidden_states[0], ...); the keys with
    features=keys (videdit's)."""
    layer = "up_blocks.2.attentions.1.transformer_blocks.0.attn1.processor"
    block = dict(tiny.unet.named_modules())["up_blocks.2.attentions.1.transformer_blocks.0"]
    seen = {}

    def last_output(module, name, **tokenflow):
        handle = module.register_forward_hook(lambda m, a, out: seen.__setitem__(name, out))
        try:
            return official_edit(tiny, clip, steps=2, **tokenflow)[1]
        finally:
            handle.remove()

    tf, tf_keys = last_output(block.norm1, "norm1"), last_output(block.attn1.to_k, "keys", features="keys")
    norm1 = seen["norm1"]   # the edit's last call: rows (target uncond, source cond, target cond) x 8 frames
    source = norm1.unflatten(0, (3, 8))[1]                                  # (fb, T, C)
    assert torch.equal(tf.propagation.matched[layer], source)
    keys = seen["keys"].unflatten(0, (3, 8))[1]          # (fb, T, heads * d): to_k runs on the call's rows
    torch.testing.assert_close(tf_keys.propagation.matched[layer], keys)
    assert not torch.allclose(source, keys)


def test_the_code_blend_weights():
    """sigmoid(d2 / (d1 + d2)) for the frame's batch's pivot, d1, d2 its distances to the
    middles of its batch and the one before (frames 8..15, batch middles 12 and 4)."""
    got = [code_weights(f, 8) for f in (0, 7, 8, 12, 15)]
    assert got[:2] == [((0, 1.0),), ((0, 1.0),)]                            # the first batch: its own pivot
    for (own, w), (prev, w2) in got[2:]:
        assert (own, prev) == (1, 0) and w + w2 == pytest.approx(1)
    assert [w for (_, w), _ in got[2:]] == pytest.approx([0.622459, 0.731059, 0.686910], abs=1e-6)
    assert code_weights(21, 8)[0] == (2, pytest.approx(1 / (1 + math.exp(-9 / 10))))   # d1 = 1, d2 = 9
    assert paper_weights(10, (3, 13, 20)) == ((0, pytest.approx(0.3)), (1, pytest.approx(0.7)))
    assert paper_weights(13, (3, 13, 20))[-1] == (1, 1.0)


def test_the_official_propagation_on_a_hand_made_case():
    """Pivots 3 and 12 (batches of 8), T = 4 one-hot features; frame 9 takes w = sigmoid(5/8)
    of pivot 12's outputs and 1 - w of pivot 3's at its tokens' neighbours, in every branch
    (the source too), or the edit branch only with exact_source; frame 2 pivot 3's alone."""
    layer, T = "up_blocks.2.attentions.0.transformer_blocks.0.attn1.processor", 4
    eye = torch.eye(T)
    p_feats = torch.stack([eye, eye[[2, 0, 3, 1]]])                # pivot 3: e_s, pivot 12: e_q(s)
    p_out = torch.randn(1, 2, 2, T, 3)                             # (halves, nb, P, T, C)
    pa, pb = torch.tensor([3, 1, 0, 2]), torch.tensor([1, 2, 0, 3])
    q = torch.tensor([2, 0, 3, 1])                                 # pivot 12's token s is e_q(s)
    for exact in (False, True):
        tf = PivotalPropagation([layer], TokenFlowConfig(exact_source=exact), source=0, norms=None)
        info = CallInfo(n_branches=2, guided=False, latent_size=(2, 2), frames=(3, 12), pivotal=True)
        call = AttnCall(layer=layer, cross=False, info=info, heads=1, tokens=T)

        def run(feats, out):
            k = torch.stack([feats, feats]).flatten(0, 1)[:, None]  # (nb * fb, 1 head, T, d)
            tf.qkv(call, k, k, k)
            return tf.output(call, out.flatten(0, 2)).view_as(out)

        assert torch.equal(run(p_feats, p_out), p_out)               # the pivotal pass keeps its outputs
        info.frames, info.pivotal = (2, 9), False
        mine = torch.randn(1, 2, 2, T, 3)
        # frame 2: pivot 3's token order pa; frame 9: pivot 3's pa and pivot 12's pb
        feats = torch.stack([eye[pa], eye[pa] + 0.9 * eye[[2, 0, 3, 1]][pb]])
        got = run(feats, mine)
        w = 1 / (1 + math.exp(-5 / 8))
        rows = [1] if exact else [0, 1]
        torch.testing.assert_close(got[0, rows, 0], p_out[0, rows, 0][:, pa])
        idx12 = torch.argsort(q)[pa]                                   # pivot 12's token nearest to e_pa + 0.9 e_q(pb)
        blend = w * p_out[0, rows, 1][:, idx12] + (1 - w) * p_out[0, rows, 0][:, pa]
        torch.testing.assert_close(got[0, rows, 1], blend)
        if exact:
            assert torch.equal(got[0, 0], mine[0, 0])                   # the source keeps its own


def test_the_preset_is_the_official_configuration():
    """configs/tokenflow.yaml resolves to config_pnp.yaml's and preprocess.py's values."""
    from videdit.cli import _with_config, build_parser, editor_params

    a = _with_config(build_parser(), ["edit", "x.mp4", "-s", "a woman running", "-t", "a marble sculpture", "-o",
                                      "o.mp4", "--config", str(CONFIGS / "tokenflow.yaml")])
    s = EditSettings(source_prompt=a.source, target_prompt=a.target, negative_prompt=a.negative, steps=a.steps,
                     guidance=a.guidance, inversion=a.inversion, inversion_params=dict(a.inversion_param),
                     editor=a.editor, editor_params=editor_params(a), temporal=dict(a.temporal),
                     source_branch=a.source_branch)
    assert s.negative_prompt == "ugly, blurry, low res, unrealistic, unaesthetic"
    assert (s.steps, s.guidance, s.strength, s.editor) == (50, 7.5, 1.0, "plug_and_play")
    assert (s.editor_config.feature_fraction, s.editor_config.attention_fraction) == (0.8, 0.5)   # pnp_f_t, pnp_attn_t
    assert s.editor_config.source_prompt and s.pin_source                  # the stored latents, the inversion prompt
    assert (s.inversion, s.inversion_config.inversion_steps, s.inversion_config.guidance) == ("ddim", 500, 1.0)
    assert s.inversion_config.start_noise == "renoised"          # get_ddim_eps + add_noise
    assert (a.model, a.seed) == ("stabilityai/stable-diffusion-2-1-base", 1)   # sd_version 2.1, seed 1
    [(spec, config)] = s.temporal_configs
    assert spec.name == "tokenflow" and config == TokenFlowConfig()
    assert (config.scope, config.features, config.blend, config.batch_size, config.exact_source) == (
        "clip", "norm1", "code", 8, False)
    assert a.window >= 10000


def test_the_source_branch_reads_the_stored_latents_under_the_source_prompt(tiny, clip):
    """Every UNet call (the pivotal pass too) sees the source rows at the inversion's latents of
    its step and frames, with the source prompt's embedding: the source's conditional half, the
    call's second row (target uncond, source cond, target cond), as the official [source, uncond, cond]."""
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, editor="plug_and_play",
                     editor_params={"source_prompt": True}, temporal=OFFICIAL)
    stack = s.temporal_stack()
    inv = invert_frames(tiny, clip, s)
    calls = []
    handle = tiny.unet.register_forward_pre_hook(lambda m, args, kw: calls.append(
        (args[0].unflatten(0, (3, -1)), kw["encoder_hidden_states"].unflatten(0, (3, -1)))), with_kwargs=True)
    try:
        edit_latents(tiny, inv, s, temporal=stack)
    finally:
        handle.remove()
    drawn = stack.modules[0].pivots.drawn
    frames = [f for i in range(3) for f in (list(drawn[i]), list(range(8)))]
    source = tiny.encode_text([SOURCE])[0]
    assert len(calls) == 6
    for i, ((x, text), f) in enumerate(zip(calls, frames)):
        stored = inv.trajectory[i // 2][f].to(x.dtype)
        torch.testing.assert_close(x[1], stored, rtol=0, atol=1e-6)
        torch.testing.assert_close(text[1], source.expand_as(text[1]).to(text.dtype))


def test_the_pivotal_pass_memory_is_said(tiny, clip, caplog, monkeypatch):
    """2 * rows * P**2 * T * C numbers at the largest layer: tiny-random's 8x8 latents at its
    64-token, 32-channel layers, 2 pivots, 2 halves x 2 branches, fp32: 2 * 4 * 4 * 64 * 32 * 4
    bytes; said in one line where it passes the threshold. SD 1.5's 64x64 layers (4096 tokens,
    320 channels) in fp16 at 45 pivots (the 353-frame portrait clip) would hold 42.5 GB."""
    import videdit.video.tokenflow as tokenflow

    layers = [n for n in tiny.unet.attn_processors if n.endswith("attn1.processor")]
    assert tokenflow.pivotal_bytes(tiny.unet, layers, (8, 8), 2, 4) == 2 * 4 * 4 * 64 * 32 * 4
    assert 2 * 4 * 45 ** 2 * 4096 * 320 * 2 / 1e9 == pytest.approx(42.5, abs=0.05)
    monkeypatch.setattr(tokenflow, "WARN_BYTES", 2 * 4 * 4 * 64 * 32 * 4 - 1)
    with caplog.at_level("WARNING", logger="videdit.tokenflow"):
        official_edit(tiny, clip, steps=1)
    assert [r.getMessage() for r in caplog.records] == [
        "tokenflow: 2 pivots attend jointly; the pivotal pass holds 0.0 GB of keys and values at its largest layer "
        "(growing with the square of the clip's length); scope window (configs/tokenflow-plus.yaml) edits in windows "
        "at flat memory"]
