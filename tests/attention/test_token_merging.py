"""Token merging (tomesd): the merge itself, its installation on the UNet, and edits with it."""

from pathlib import Path

import pytest
import torch

from tests.video.clips import Probing
from videdit import io
from videdit.attention import AttentionModule, TokenMerging, bipartite_soft_matching_2d, compose, token_merging
from videdit.cli import _with_config, build_parser, temporal_modules
from videdit.core.loop import CallInfo
from videdit.errors import VideditError
from videdit.models import load_model
from videdit.pipeline import EditSettings, _settings, edit_latents, invert_frames
from videdit.video import TemporalStack
from videdit.video.cross_frame import CrossFrame, CrossFrameConfig


def unet_out(tiny, size=(16, 16), batch=2):
    torch.manual_seed(0)
    x = torch.randn(batch, 4, *size)
    e = tiny.encode_text(["a"] * batch)
    return tiny.unet(x, torch.full((batch,), 500), encoder_hidden_states=e).sample


class Tokens(AttentionModule):
    """Records the query tokens each self-attention layer computes attention over."""

    cross = False
    any_tokens = True

    def __init__(self):
        self.seen = {}

    def qkv(self, call, q, k, v):
        self.seen[call.layer] = q.shape[-2]
        return q, k, v


def test_ratio_zero_leaves_the_output_unchanged_and_merging_changes_it(tiny):
    base = unet_out(tiny)
    with token_merging(tiny.unet, TokenMerging(ratio=0.0)) as blocks:
        same = unet_out(tiny)
    assert len(blocks) == 7                                    # tiny-random's transformer blocks, all hooked
    assert (same - base).abs().max().item() == 0
    with token_merging(tiny.unet, TokenMerging(ratio=0.5)):
        merged = unet_out(tiny)
    assert (merged - base).abs().max().item() > 1e-3
    assert all(type(p).__name__ != "MergedAttention" for p in tiny.unet.attn_processors.values())


@pytest.mark.parametrize("size, ratio, max_downsample, full, half", [
    ((16, 16), 0.5, 1, 256 - 128, 64),        # tomesd's defaults: only the full-grid blocks merge
    ((16, 16), 0.5, 2, 128, 64 - 32),         # max_downsample 2: the half-grid ones too
    ((16, 12), 0.5, 1, 192 - 96, 48),
    ((16, 16), 0.75, 1, 64, 64),              # the most 2x2 cells allow: one token per cell left
    ((10, 10), 0.7, 1, 100 - 70, 25),         # 70 of the 75 sources (100 tokens - 25 cells)
])
def test_merged_self_attention_sees_the_expected_token_count(tiny, size, ratio, max_downsample, full, half):
    rec, before = Tokens(), dict(tiny.unet.attn_processors)
    tiny.unet.set_attn_processor({**before, **compose(tiny.unet, [rec], CallInfo(frames=(0, 1)))})
    try:
        with token_merging(tiny.unet, TokenMerging(ratio=ratio, max_downsample=max_downsample), seed=3) as blocks:
            unet_out(tiny, size)
    finally:
        tiny.unet.set_attn_processor(before)
    assert {blocks[n].tokens for n in blocks if n.startswith("down_blocks.0")} == {(size[0] * size[1], full)}
    full_grid = [n for n in rec.seen if n.startswith(("down_blocks.0", "up_blocks.2"))]
    half_grid = [n for n in rec.seen if n.startswith(("down_blocks.1", "up_blocks.1"))]
    assert len(full_grid) == 3 and len(half_grid) == 3
    assert {rec.seen[n] for n in full_grid} == {full}
    assert {rec.seen[n] for n in half_grid} == {half}


@pytest.mark.parametrize("rand", [True, False])
def test_merge_then_unmerge_is_exact_on_tokens_duplicated_in_2x2_blocks(rand):
    g = torch.Generator().manual_seed(0)
    B, h, w, C = 3, 8, 6, 16
    cells = torch.randint(-8, 9, (B, h // 2, w // 2, C), generator=g).float()
    x = cells.repeat_interleave(2, 1).repeat_interleave(2, 2).reshape(B, h * w, C)   # each cell's 4 tokens equal
    merge, unmerge = bipartite_soft_matching_2d(x, h, w, 2, 2, r=int(h * w * 0.5),
                                                generator=torch.Generator().manual_seed(1) if rand else None)
    m = merge(x)
    assert m.shape == (B, h * w - 24, C)
    assert torch.equal(unmerge(m), x)
    y = torch.randn(B, h * w, C, generator=g)                   # distinct tokens: merging loses something
    merge, unmerge = bipartite_soft_matching_2d(y, h, w, 2, 2, r=24)
    assert (unmerge(merge(y)) - y).abs().max().item() > 0.1


def test_one_destination_per_cell_and_seeded_draws():
    idx = torch.arange(64.)[None, :, None].expand(2, 64, 1)              # (B, N, 1): each token its index
    cells = idx.view(2, 4, 2, 4, 2, 1).mean((2, 4), keepdim=True).expand(2, 4, 2, 4, 2, 1).reshape(2, 64, 1)
    metric = torch.cat([cells, torch.ones_like(cells)], -1)              # the 4 tokens of a 2x2 cell alike
    merge, _ = bipartite_soft_matching_2d(metric, 8, 8, 2, 2, r=48, generator=torch.Generator().manual_seed(0))
    means = merge(idx)[0, :, 0]                  # every source merged: what is left is one mean per cell
    assert sorted(means.tolist()) == sorted(cells[0, :, 0].unique().tolist())

    y = torch.randn(2, 64, 8)

    def kept(seed):
        merge, _ = bipartite_soft_matching_2d(y, 8, 8, 2, 2, r=24, generator=torch.Generator().manual_seed(seed))
        return merge(idx)[:, :, 0]

    assert torch.equal(kept(0), kept(0)) and not torch.equal(kept(0), kept(1))


def test_originals_return_after_an_exception_and_bad_options_are_refused(tiny):
    before = dict(tiny.unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with token_merging(tiny.unet, TokenMerging()):
            raise RuntimeError("boom")
    assert all(tiny.unet.attn_processors[n] is p for n, p in before.items())
    assert not any(m._forward_pre_hooks for m in tiny.unet.modules())
    with pytest.raises(VideditError, match=r"ratio must be in \[0, 0.75\]"):
        TokenMerging(ratio=0.9)
    with pytest.raises(VideditError, match="max_downsample must be 1, 2, 4 or 8"):
        TokenMerging(max_downsample=3)


def test_modules_reading_positions_are_refused_by_name_on_merged_layers_only(tiny):
    class ReadsMaps(AttentionModule):
        def __init__(self, layers):
            self.layers = layers

    before = dict(tiny.unet.attn_processors)

    def install(layers):
        tiny.unet.set_attn_processor({**before, **compose(tiny.unet, [ReadsMaps(layers)], CallInfo(frames=(0,)))})

    try:
        install("*down_blocks.0*attn1*")                     # the full grid: merged at max_downsample 1
        with pytest.raises(VideditError, match="token merging cannot run with ReadsMaps on down_blocks.0"):
            with token_merging(tiny.unet, TokenMerging(), latent_size=(16, 16)):
                pass
        assert all(tiny.unet.attn_processors[n] is p for n, p in before.items() if "down_blocks.0" not in n)
        with token_merging(tiny.unet, TokenMerging(ratio=0.0), latent_size=(16, 16)):
            unet_out(tiny)                                    # nothing merges at ratio 0
        install("*down_blocks.1*attn1*")                     # the half grid: merged only from max_downsample 2
        with token_merging(tiny.unet, TokenMerging(), latent_size=(16, 16)):
            unet_out(tiny)
        with pytest.raises(VideditError, match="ReadsMaps on down_blocks.1"):
            with token_merging(tiny.unet, TokenMerging(max_downsample=2), latent_size=(16, 16)):
                pass
    finally:
        tiny.unet.set_attn_processor(before)


# --- in an edit: Text2Video-Zero's presets, cross-frame attention, editors ------------------------

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PIX2PIX_LAYER = "up_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"   # tiny-pix2pix's 8x8 grid at 16x16


class Probe(AttentionModule):
    """Keys and values (halves, nb, heads, T, d) per frame at ``step`` on one self-attention layer."""

    cross, any_tokens = False, True

    def __init__(self, layer):
        self.layer, self.seen = layer, {}

    def applies(self, layer, cross):
        return layer == self.layer

    def qkv(self, call, q, k, v):
        if call.info.step == 1:
            ks, vs = call.split(k), call.split(v)
            self.seen.update({f: (ks[:, :, j].clone(), vs[:, :, j].clone()) for j, f in enumerate(call.info.frames)})
        return q, k, v


def Probes(layer):
    return Probing(Probe(layer))


@pytest.fixture(scope="module")
def wolf32(shared_data):
    clip, _ = io.read_clip(shared_data / "videos" / "wolf.mp4", io.ReadOptions(size=(32, 32), max_frames=3))
    return clip


def test_text2video_zero_presets_leave_it_off_and_tome_turns_it_on():
    for name in ("text2video-zero", "text2video-zero-canny", "text2video-zero-pose", "text2video-zero-depth"):
        a = _with_config(build_parser(), ["edit", "in.mp4", "-t", "x", "-o", "o.mp4", "--config",
                                          str(CONFIGS / f"{name}.yaml")])
        assert a.tome == 0.0, name                           # the reference's merging_ratio default
    a = _with_config(build_parser(), ["edit", "in.mp4", "-t", "x", "-o", "o.mp4", "--config",
                                      str(CONFIGS / "text2video-zero.yaml"), "--tome", "0.5"])
    s = EditSettings(target_prompt="x", editor=a.editor, inversion=a.inversion, token_merging=a.tome)
    assert s.token_merging_config == TokenMerging(ratio=0.5)   # tomesd's defaults otherwise
    assert _settings(token_merging=0.5).token_merging_config == TokenMerging(ratio=0.5, max_downsample=1, sx=2, sy=2)
    with pytest.raises(VideditError, match="token merging does not take rate"):
        EditSettings(token_merging={"rate": 0.5})


def test_text2video_zero_with_token_merging_anchors_every_frame_on_frame_0s_merged_tokens(wolf32):
    """The preset (2 steps) on tiny-pix2pix, 3 frames, merging its 8x8 layers (max_downsample 2: it has no
    attention on the full grid): each frame's self-attention sees 64 - 32 tokens and takes frame 0's merged
    keys and values, in each of the 3 guidance terms; ratio 0 gives the unmerged edit exactly."""
    model = load_model("tiny-pix2pix", device="cpu")
    a = _with_config(build_parser(), ["edit", "in.mp4", "-t", "make it snowy", "-o", "o.mp4", "--steps", "2",
                                      "--config", str(CONFIGS / "text2video-zero.yaml")])

    def edit(tome, probes=None):
        s = EditSettings(target_prompt="make it snowy", editor=a.editor, inversion=a.inversion, steps=a.steps,
                         guidance=a.guidance, seed=a.seed, editor_params=dict(a.editor_param), batch_size=3,
                         token_merging=tome)
        cross = CrossFrame(CrossFrameConfig(**temporal_modules(a)["cross_frame"]))
        stack = TemporalStack([probes[0], cross, probes[1]] if probes else [cross])
        return edit_latents(model, invert_frames(model, wolf32, s), s, temporal=stack)

    off = edit(None)
    assert (edit({"ratio": 0.0, "max_downsample": 2}) - off).abs().max().item() == 0
    probes = Probes(PIX2PIX_LAYER), Probes(PIX2PIX_LAYER)
    merged = edit({"ratio": 0.5, "max_downsample": 2}, probes)
    assert (merged - off).abs().max().item() > 1e-3
    before, after = probes[0].probe.seen, probes[1].probe.seen
    assert sorted(after) == [0, 1, 2] and before[0][0].shape[:2] == (1, 3) and before[0][0].shape[-2] == 32
    for f in range(3):
        for i in (0, 1):
            torch.testing.assert_close(after[f][i], before[0][i], rtol=0, atol=0)


def test_an_editor_storing_cross_attention_runs_and_one_swapping_self_attention_maps_is_refused(tiny, wolf32):
    """prompt_to_prompt with a local blend stores cross-attention maps (attn2: never merged by default) and
    swaps self-attention maps (InjectQKV) on layers of at most self_replace_max_tokens: refused by name where
    those are merged layers (tiny-random's 4x4 full grid at 32 px), run where they are not."""
    kw = dict(source_prompt="a wolf", target_prompt="a red wolf", editor="prompt_to_prompt", steps=2,
              temporal={"cross_frame": {"mode": "first"}}, token_merging=0.5)
    s = _settings(**kw, editor_params={"blend_words": ["wolf"], "self_replace": 1.0})
    with pytest.raises(VideditError, match="token merging cannot run with InjectQKV on down_blocks.0"):
        edit_latents(tiny, invert_frames(tiny, wolf32[:2], s), s)
    assert all(type(p).__name__ != "MergedAttention" for p in tiny.unet.attn_processors.values())
    s = _settings(**kw, editor_params={"blend_words": ["wolf"], "self_replace": 1.0, "self_replace_max_tokens": 4})
    out = edit_latents(tiny, invert_frames(tiny, wolf32[:2], s), s)
    plain = _settings(**{**kw, "token_merging": None}, editor_params=dict(s.editor_params))
    assert out.shape == (2, 4, 4, 4) and torch.isfinite(out).all()
    assert (out - edit_latents(tiny, invert_frames(tiny, wolf32[:2], plain), plain)).abs().max().item() > 1e-4


def test_cli_tome_and_a_config_mapping_reach_the_edit(tmp_path, capsys, monkeypatch):
    """`--tome 0.5` reaches edit_video as its token_merging; a config's `tome:` mapping sets the other
    options; a bad one is one line naming the option."""
    import videdit.pipeline
    from tests.test_cli import BASE, SAMPLE, run

    seen = []

    def edit_video(*args, token_merging=None, **kw):
        seen.append(token_merging)
        raise VideditError("stop here")

    monkeypatch.setattr(videdit.pipeline, "edit_video", edit_video)
    code, _, err = run(capsys, "edit", SAMPLE, "-t", "a blue circle", "-o", tmp_path / "o.mp4", *BASE, "--tome", 0.5)
    assert code == 2 and "stop here" in err and seen == [0.5]
    monkeypatch.undo()
    cfg = tmp_path / "tome.yaml"
    cfg.write_text("inversion: ddim\neditor: plain\ntome: {ratio: 0.5, merge_mlp: true, sx: 3}\n")
    a = _with_config(build_parser(), ["edit", "in.mp4", "-t", "x", "-o", "o.mp4", "--config", str(cfg)])
    assert _settings(token_merging=a.tome).token_merging_config == TokenMerging(ratio=0.5, merge_mlp=True, sx=3)
    cfg.write_text("tome: {ratio: 0.5, rate: 2}\n")
    code, _, err = run(capsys, "edit", SAMPLE, "-t", "x", "-o", tmp_path / "p.mp4", *BASE, "--config", cfg)
    assert code == 2 and "token merging does not take rate" in err


def test_merge_mlp_and_crossattn_merge_around_the_feed_forward_and_cross_attention(tiny):
    """tomesd's merge_crossattn / merge_mlp: the same merge (from the block's input) around attn2 and ff:
    the cross-attention's queries and the feed-forward's rows are merged too (full grid only)."""
    base = unet_out(tiny)
    rec, before = Tokens(), dict(tiny.unet.attn_processors)
    rec.cross = True
    tiny.unet.set_attn_processor({**before, **compose(tiny.unet, [rec], CallInfo(frames=(0, 1)))})
    try:
        with token_merging(tiny.unet, TokenMerging(merge_crossattn=True)):
            cross = unet_out(tiny)
    finally:
        tiny.unet.set_attn_processor(before)
    assert rec.seen["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"] == 128
    assert rec.seen["down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"] == 64
    with token_merging(tiny.unet, TokenMerging()):
        attn = unet_out(tiny)
    ff, rows = dict(tiny.unet.named_modules())["down_blocks.0.attentions.0.transformer_blocks.0.ff"], []
    with token_merging(tiny.unet, TokenMerging(merge_mlp=True)):
        handle = ff.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[1]))   # after the merge
        try:
            mlp = unet_out(tiny)
        finally:
            handle.remove()
    assert rows == [128]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny.unet.modules())
    assert min((cross - attn).abs().max().item(), (mlp - attn).abs().max().item(), (attn - base).abs().max()) > 1e-4


def test_a_job_file_takes_tome_and_its_inversion_does_not_depend_on_it():
    from videdit.batch import EDIT_ONLY, EDIT_OPTIONS, _normalise

    assert _normalise({"tome": 0.5}, "job 1") == {"token_merging": 0.5}
    assert "token_merging" in EDIT_OPTIONS and "token_merging" in EDIT_ONLY
