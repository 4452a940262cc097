"""Cross-image attention (videdit/editing/cross_image.py) against the official code,
garibida/cross-image-attention: its defaults, its step counting, swap guidance, attention
contrast, masked AdaIN, and the appearance inverted as the input is; on tiny-random."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from tests.editing.attention_runs import plan_of, rel, run_plan, settings, with_probe
from videdit.attention import AttentionModule, compose, layers_at
from videdit.core.loop import StepCallback
from videdit.editing import EDITORS
from videdit.editing.cross_image import (CrossImageConfig, CrossImageSteps, Masks, SegmentationStore, SwapAttention,
                                         Timing, adain, contrast, segmentation_layers, swap_layers)
from videdit.editing.freeu import freeu_hooks
from videdit.editing.self_segmentation import object_mask, word_map
from videdit.editing.words import find_word
from videdit.errors import VideditError
from videdit.pipeline import EditSettings, edit_context, edit_latents, invert_frames


@pytest.fixture(scope="module")
def inverted(attention_inverted):
    return attention_inverted


@pytest.fixture(scope="module")
def appearance(shared_data):
    return str(shared_data / "videos" / "car-turn" / "00000.png")


def test_defaults_follow_the_official_run_config():
    """config.py RunConfig and run.py run_appearance_transfer: 100 steps, skip_steps 32 (strength
    0.68), guidance_scale 1.0, swap_guidance_scale 3.5, contrast_strength 1.67, cross_attn_64_range
    (10, 90), cross_attn_32_range (10, 70), adain_range (20, 100), use_masked_adain; the structure's
    keys at ``step % 5 == 0 and step < 40`` (appearance_transfer_model.py); FreeU b1 1.2, b2 1.4,
    s1 0.9, s2 0.2 (models/unet_2d_condition.py); the output's own queries."""
    spec = EDITORS["cross_image"]
    assert dict(spec.edit_defaults) == {"steps": 100, "guidance": 1.0, "strength": 0.68}
    assert "garibida/cross-image-attention" in spec.reference
    s = EditSettings(editor="cross_image")
    assert (s.steps, s.guidance, s.start_step) == (100, 1.0, 32)
    c = CrossImageConfig()
    assert (c.swap_guidance, c.contrast) == (3.5, 1.67)
    assert (c.latent_window, c.half_window, c.adain_window) == ((0.1, 0.9), (0.1, 0.7), (0.2, 1.0))
    assert c.masked_adain and (c.structure_every, c.structure_until) == (5, 0.4)
    assert c.freeu == (1.2, 1.4, 0.9, 0.2) and c.queries == "output" and c.appearance_prompt is None
    assert CrossImageConfig(latent_window=[0.2, 0.5], freeu=[1, 1, 1, 1]).latent_window == (0.2, 0.5)
    with pytest.raises(VideditError, match="ends"):
        CrossImageConfig(half_window=(0.5, 0.2))


def test_steps_are_counted_as_the_official_code_counts_them():
    """utils/attention_utils.py should_mix_keys_and_values and models/stable_diffusion.py: after
    skip_steps 32 of 100, 68 steps run; the attention's counter is the previous sampled step's
    index (the callback sets it), so the [10, 90) and [10, 70) windows swap from sampled step 11
    (schedule step 43) to the end; the swap guidance falls from 3.5 to 1.75 over the 68 steps;
    AdaIN follows sampled steps 20 on."""
    t = Timing(start=32, n=100)
    assert t.swap((0.1, 0.9)) == t.swap((0.1, 0.7)) == set(range(43, 100))
    assert t.after((0.2, 1.0)) == set(range(52, 100))
    w = t.swap_scales(3.5)
    assert len(w) == 68 and (w[0], w[-1]) == (3.5, 1.75) and w[1] == pytest.approx(3.5 - 1.75 / 67)
    assert Timing(0, 100).swap_scales(1.5)[-1] == 1.0                      # max(w / 2, 1)
    full = Timing(start=0, n=100)                                           # skip_steps 0
    assert full.swap((0.1, 0.9)) == set(range(11, 91)) and full.swap((0.1, 0.7)) == set(range(11, 71))
    assert full.structure(5, 0.4) & full.swap((0.1, 0.9)) == {11, 16, 21, 26, 31, 36}
    assert full.structure(0, 0.4) == set()


def test_each_grid_swaps_in_its_own_window(tiny, wolf_frames, appearance):
    """The latent-grid layers (SD's 64x64; tiny-random's up_blocks.2) swap in [0.1, 0.9) of the
    steps and the half-grid ones (32x32; up_blocks.1) in [0.1, 0.7), the output taking the
    structure's keys and values at counter 5 (every 5th, before 0.4 of the steps); elsewhere the
    output's keys are the plain branch's. At 20 steps: counters 2..17 and 2..13, steps 3..18 and 3..14."""
    s = EditSettings(source_prompt="a wolf", target_prompt="a wolf", steps=20, guidance=1.0, strength=1.0,
                     editor="cross_image", editor_params={"appearance": appearance, "masked_adain": False})
    inv = invert_frames(tiny, wolf_frames[:1], s)
    plan = plan_of(tiny, inv, s)
    assert plan.x.shape[0] == 4 and (plan.source_branch, plan.output_branch) == (0, 2)
    latent = [n for n in layers_at(tiny.unet, (8, 8), 1, cross=False) if n.startswith("up_blocks")]
    half = [n for n in layers_at(tiny.unet, (8, 8), 2, cross=False) if n.startswith("up_blocks")]
    probes = []
    for layer in (latent[0], half[0]):
        plan, probe = with_probe(tiny, plan, layer)
        probes.append(probe)
    run_plan(tiny, inv, s, plan)
    taken = {latent[0]: {}, half[0]: {}}
    for step, layer, _, k, v in probes[0].seen + probes[1].seen:
        # (halves, nb, fb, heads, T, d); branches: structure, appearance, output, plain
        taken[layer][step] = next((b for b in (1, 3, 0) if torch.equal(k[:, 2], k[:, b])
                                   and torch.equal(v[:, 2], v[:, b])), None)
    expect = {latent[0]: range(3, 19), half[0]: range(3, 15)}
    for layer, steps in expect.items():
        assert taken[layer] == {i: (0 if i == 6 else 1) if i in steps else 3 for i in range(20)}, layer


def test_swap_guidance_extrapolates_from_the_plain_output(tiny, inverted, appearance):
    """models/stable_diffusion.py __call__ at guidance_scale 1: eps = eps_no_swap + w_j (eps_swap -
    eps_no_swap), w_j = linspace(3.5, 1.75, n)[j] on the swap steps, eps_swap elsewhere; the plain
    branch's latents are the output's at every step."""
    s, inv, _ = inverted
    s = dataclasses.replace(settings(s, "cross_image", appearance=appearance, masked_adain=False), guidance=1.0)
    plan = plan_of(tiny, inv, s)
    steps = plan.callbacks[0]
    assert isinstance(steps, CrossImageSteps) and (steps.output, steps.plain) == (2, 3)

    class Record(StepCallback):
        def __init__(self):
            self.x, self.out = {}, {}

        def on_noise(self, ctx, x, out):
            self.x[ctx.step], self.out[ctx.step] = x.clone(), out.clone()
            return out

    before, after = Record(), Record()
    run_plan(tiny, inv, s, dataclasses.replace(plan, callbacks=[before, steps, after]))
    w = np.linspace(3.5, 1.75, 5)
    assert steps.swap_steps == set(range(5))   # 5 steps: counters 0, 0, 1, 2, 3; windows [0, 4) and [0, 3)
    for i in range(5):
        o, p = before.out[i][2], before.out[i][3]
        want = p + float(w[i]) * (o - p) if i in steps.swap_steps else o
        torch.testing.assert_close(after.out[i][2], want, rtol=0, atol=1e-6)
        assert torch.equal(before.x[i][2], before.x[i][3])
        if i in steps.swap_steps:
            assert rel(o, p) > 1e-3
    off = plan_of(tiny, inv, settings(s, "cross_image", appearance=appearance, masked_adain=False, swap_guidance=1))
    assert off.x.shape[0] == 3                 # no plain branch without swap or text guidance


def test_text_guidance_takes_the_plain_unconditional_output():
    """Above text guidance 1 (models/stable_diffusion.py): eps = eps_no_swap(uncond) +
    g (eps_swap(cond) - eps_no_swap(uncond)), so the output's unconditional half is the plain one's."""
    steps = CrossImageSteps(output=2, appearance=1, plain=3, trajectory=None, swap_steps=frozenset({4}),
                            scales=np.ones(10), start=0, text_guided=True, adain_steps=frozenset())
    u, c = torch.randn(4, 1, 4, 8, 8), torch.randn(4, 1, 4, 8, 8)
    ctx = type("Ctx", (), {"step": 4})()
    u2, c2 = steps.on_guidance(ctx, (0,), u, c)
    assert torch.equal(u2[2], u[3]) and torch.equal(u2[:2], u[:2]) and torch.equal(c2, c)
    ctx.step = 5
    assert torch.equal(steps.on_guidance(ctx, (0,), u, c)[0], u)
    assert torch.equal(steps.on_noise(ctx, None, c), c)   # no swap guidance when text-guided


def test_contrast_sharpens_the_output_attention_map(tiny, inverted, appearance):
    """utils/attention_utils.py enhance_tensor: A' = clip((A - mean) * 1.67 + mean, 0, 1) on the
    output's attention at the swapped layers, not renormalised; the other branches keep theirs."""
    p = torch.softmax(torch.randn(2, 16, 16) * 3, -1)
    want = ((p - 1 / 16) * 1.67 + 1 / 16).clamp(0, 1)
    torch.testing.assert_close(contrast(p, 1.67), want, rtol=0, atol=1e-7)
    assert (contrast(p, 1.67).sum(-1) - 1).abs().max() > 1e-2

    s, inv, _ = inverted
    s = settings(s, "cross_image", appearance=appearance, masked_adain=False)
    plan = plan_of(tiny, inv, s)
    swap = next(m for proc in plan.processors.values() for m in proc.modules if isinstance(m, SwapAttention))
    layer = sorted(swap.names)[0]

    class Probs(AttentionModule):
        needs_probs = True

        def __init__(self):
            self.seen = []

        def applies(self, name, cross):
            return name == layer

        def qkv(self, call, q, k, v):
            self.qk = call.split(q), call.split(k)
            return q, k, v

        def probs(self, call, p):
            self.seen.append((call.info.step, call.split(p).clone(), *self.qk))
            return p

    probe = Probs()
    procs = dict(plan.processors)
    procs.update(compose(tiny.unet, [*plan.processors[layer].modules, probe], plan.info))
    run_plan(tiny, inv, s, dataclasses.replace(plan, processors=procs))
    checked = 0
    for step, p, q, k in probe.seen:   # (halves, nb, fb, heads, Tq, Tk); branches: structure, appearance, out, plain
        raw = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, -1)
        want = contrast(raw[:, 2], 1.67) if step in swap.steps else raw[:, 2]
        torch.testing.assert_close(p[:, 2], want, rtol=0, atol=1e-5)
        torch.testing.assert_close(p[:, 1], raw[:, 1], rtol=0, atol=1e-5)
        checked += step in swap.steps
    assert checked >= 3


def test_masked_adain_uses_the_statistics_inside_the_masks():
    """utils/adain.py masked_adain and calc_mean_std: per-channel mean and sqrt(unbiased var + 1e-5)
    of the content inside its mask and of the style inside its own; outside the mask the content
    is kept."""
    g = torch.Generator().manual_seed(0)
    x, style = torch.randn(4, 8, 8, generator=g), torch.randn(4, 8, 8, generator=g) * 3 + 2
    mask, style_mask = torch.zeros(8, 8), torch.zeros(8, 8)
    mask[2:6, 1:5], style_mask[4:, 4:] = 1, 1
    y = adain(x, style, mask, style_mask)
    inside, sinside = mask.flatten() > 0, style_mask.flatten() > 0
    yi, si = y.flatten(1)[:, inside], style.flatten(1)[:, sinside]
    torch.testing.assert_close(yi.mean(1), si.mean(1), rtol=0, atol=1e-5)
    xi = x.flatten(1)[:, inside]
    std = lambda t: (t.var(1) + 1e-5).sqrt()   # noqa: E731
    torch.testing.assert_close(yi, (xi - xi.mean(1, keepdim=True)) / std(xi)[:, None] * std(si)[:, None]
                               + si.mean(1, keepdim=True), rtol=0, atol=1e-5)
    assert torch.equal(y.flatten(1)[:, ~inside], x.flatten(1)[:, ~inside])
    whole = adain(x, style)                     # utils/adain.py adain: the whole latents
    want = (x - x.mean((1, 2), keepdim=True)) / (x.flatten(1).var(1) + 1e-5).sqrt()[:, None, None] \
        * (style.flatten(1).var(1) + 1e-5).sqrt()[:, None, None] + style.mean((1, 2), keepdim=True)
    torch.testing.assert_close(whole, want, rtol=0, atol=1e-5)


def test_masks_are_found_once_from_the_branches_attention(tiny, inverted, appearance):
    """appearance_transfer_model.py get_adain_callback and utils/segmentation.py: the masks come from
    the structure's and the appearance's attention at the first AdaIN step (the official records it
    at counter adain_start - 1): the last decoder self-attention on the latent grid and the last
    cross-attention on half of it, at the object word's tokens; found once, they serve every later step."""
    s, inv, _ = inverted
    s = dataclasses.replace(settings(s, "cross_image", "a wolf in a forest", appearance=appearance,
                                     object_noun="wolf", adain_window=(0.4, 1.0)), steps=5)
    plan = plan_of(tiny, inv, s)
    steps = plan.callbacks[0]
    assert steps.adain_steps == {2, 3, 4}
    store = next(m for proc in plan.processors.values() for m in proc.modules if isinstance(m, SegmentationStore))
    assert (store.step, store.branches) == (2, (0, 1))
    assert store.self_layer == "up_blocks.2.attentions.1.transformer_blocks.0.attn1.processor"
    assert store.cross_layer == "up_blocks.1.attentions.1.transformer_blocks.0.attn2.processor"
    run_plan(tiny, inv, s, plan)
    wolf = find_word(tiny.tokens("a wolf in a forest"), "wolf")
    for branch, mask in ((0, steps.found.structure), (1, steps.found.appearance)):
        assert store.self_maps[branch].shape == (1, 64, 64) and store.cross_maps[branch].shape[:2] == (1, 16)
        word = word_map(store.cross_maps[branch][0][:, wolf].mean(-1), (4, 4), (8, 8))
        assert torch.equal(mask[0], object_mask(store.self_maps[branch][0], word))
    with pytest.raises(VideditError, match="is not a word"):
        plan_of(tiny, inv, settings(s, "cross_image", appearance=appearance, object_noun="zebra"))


def test_adain_after_each_step_within_the_masks():
    """appearance_transfer_model.py get_adain_callback: after each step of adain_range the output
    latents are masked-AdaIN'd to the appearance's (structure mask for the output, appearance mask
    for the appearance), the appearance is back on its trajectory, and the plain branch follows."""
    g = torch.Generator().manual_seed(0)
    trajectory = torch.randn(4, 1, 4, 8, 8, generator=g) * 2 + 1
    ms, ma = torch.zeros(1, 8, 8), torch.zeros(1, 8, 8)
    ms[:, :4], ma[:, 3:] = 1, 1
    calls = []

    def masks():
        calls.append(1)
        return Masks(structure=ms, appearance=ma)

    steps = CrossImageSteps(output=2, appearance=1, plain=3, trajectory=trajectory,
                            swap_steps=frozenset(), scales=np.ones(3), start=0, text_guided=False,
                            adain_steps=frozenset({1, 2}), masks=masks)
    x = torch.randn(4, 1, 4, 8, 8, generator=g)
    for i in range(3):
        ctx = type("Ctx", (), {"step": i})()
        y = steps.on_step_end(ctx, x)
        assert torch.equal(y[1], trajectory[i + 1]) and torch.equal(y[3], y[2])
        want = adain(x[2, 0], trajectory[i + 1, 0], ms[0], ma[0]) if i else x[2, 0]
        torch.testing.assert_close(y[2, 0], want, rtol=0, atol=0)
        x = y
    assert len(calls) == 1


def test_the_appearance_is_inverted_as_the_input(tiny, wolf_frames, appearance):
    """run.py / utils/latent_utils.py invert_images: both images are inverted alike (edit-friendly
    DDPM at 100 steps and guidance 3.5, under one prompt); the appearance with its own noise draws.
    appearance_prompt None is the source prompt."""
    s = EditSettings(source_prompt="a wolf", target_prompt="a wolf", steps=4, inversion="ddpm",
                     inversion_params={"guidance": 3.5}, editor="cross_image",
                     editor_params={"appearance": appearance, "masked_adain": False})
    inv = invert_frames(tiny, wolf_frames[:1], s)
    ref = edit_context(tiny, inv, s).references["appearance"]
    assert ref.method == "ddpm" and "noise_maps" in ref.extras
    from videdit import io

    frame, _ = io.read_clip(Path(appearance), io.ReadOptions(max_frames=1, size=(64, 64)))
    alone = invert_frames(tiny, frame, dataclasses.replace(s, seed=s.seed + 1, editor="plain", editor_params={}))
    torch.testing.assert_close(ref.trajectory, alone.trajectory, rtol=0, atol=0)
    same_seed = invert_frames(tiny, frame, dataclasses.replace(s, editor="plain", editor_params={}))
    assert rel(ref.trajectory[0], same_seed.trajectory[0]) > 0.1     # not the input's noise draws
    z = edit_latents(tiny, inv, dataclasses.replace(s, source_branch="pinned"))   # pinned: the reference inverts
    assert torch.isfinite(z).all()


def test_the_output_reads_the_appearance_and_differs_from_it_alone(tiny, inverted, appearance):
    """Without an appearance image the input is both structure and appearance (two branches and the
    plain one); with one, the edit changes; a missing file is an error."""
    s, inv, _ = inverted
    alone = plan_of(tiny, inv, settings(s, "cross_image"))
    assert alone.x.shape[0] == 3 and (alone.source_branch, alone.output_branch) == (0, 1)
    z = edit_latents(tiny, inv, settings(s, "cross_image", appearance=appearance))
    assert rel(z, edit_latents(tiny, inv, settings(s, "cross_image"))) > 1e-2
    with pytest.raises(VideditError, match="does not exist"):
        settings(s, "cross_image", appearance="no/such.png")


def test_explicit_softmax_only_where_maps_are_contrasted_or_recorded(tiny, inverted):
    """Explicit attention probabilities on the swapped layers at their swap steps (the contrast),
    and on the segmentation's two layers at the mask step; fused attention everywhere else."""
    s, inv, _ = inverted
    plan = plan_of(tiny, inv, settings(s, "cross_image", "a robot wolf in a forest", object_noun="wolf"))
    explicit = {}
    for i in range(5):
        plan.info.step = i
        explicit[i] = {n for n, p in plan.processors.items() if any(m.needs_probs for m in p.modules)}
    modules = {m for p in plan.processors.values() for m in p.modules}
    swaps = [m for m in modules if isinstance(m, SwapAttention)]
    store = next(m for m in modules if isinstance(m, SegmentationStore))
    assert store.step == 1 and store.cross_layer.endswith("attn2.processor")   # 5 steps: AdaIN after step 1 on
    for i in range(5):
        want = {n for m in swaps if i in m.steps for n in m.names} | ({store.self_layer, store.cross_layer}
                                                                       if i == 1 else set())
        assert explicit[i] == want, i
    assert explicit[3] != explicit[4]          # the half grid's window ends before the latent grid's


def test_on_sd15_the_layers_are_the_officials():
    """At 512 px (64x64 latents) on SD 1.5's UNet (its architecture, on the meta device): the swap on
    up_blocks.3's (64x64) and up_blocks.2's (32x32) self-attention (attention_utils.py
    should_mix_keys_and_values, decoder only); the masks from the last 64x64 self-attention and the
    last 32x32 cross-attention (Segmentor.update_attention); FreeU on the backbone entering every up
    block (the mid block's and up_blocks 0-2's outputs) where it has 1280 or 640 channels
    (unet_2d_condition.py)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
            attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    layers = swap_layers(unet, (64, 64))
    block = "up_blocks.{}.attentions.{}.transformer_blocks.0.attn{}.processor"
    assert layers == {1: [block.format(3, i, 1) for i in range(3)], 2: [block.format(2, i, 1) for i in range(3)]}
    assert segmentation_layers(unet, (64, 64)) == (block.format(3, 2, 1), block.format(2, 2, 2))
    hooks = freeu_hooks(unet, 1.2, 1.4, 0.9, 0.2)
    assert sorted(hooks) == ["mid_block", "up_blocks.0", "up_blocks.1", "up_blocks.2"]
    for channels, b, s in ((1280, 1.2, 0.9), (640, 1.4, 0.2)):   # a channel's mean is its spectrum's centre
        x = torch.randn(1, channels, 8, 8) + 1
        ratio = hooks["up_blocks.2"](None, (), x).mean((0, 2, 3)) / x.mean((0, 2, 3))
        torch.testing.assert_close(ratio, torch.tensor([b * s, s]).repeat_interleave(channels // 2), rtol=1e-4, atol=0)
    assert torch.equal(hooks["up_blocks.2"](None, (), x[:, :320]), x[:, :320])


def test_on_sdxl_the_layers_have_the_officials_token_counts():
    """SDXL base's UNet (its architecture, on the meta device) at 1024 px (128x128 latents): its decoder
    has no self-attention on the latent grid, so the swap is on its finest two levels, up_blocks.1
    (64x64 tokens, the latent window's) and up_blocks.0 (32x32, the half window's): the token counts
    should_mix_keys_and_values tests for; the masks from the last 64x64 self-attention and the last
    32x32 cross-attention, as Segmentor.update_attention keeps them."""
    from videdit.attention import layer_grids
    from videdit.editing.cross_image import finest_grid

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
            attention_head_dim=(5, 10, 20), use_linear_projection=True, transformer_layers_per_block=(1, 2, 10),
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
    assert finest_grid(unet, (128, 128)) == 2
    layers = swap_layers(unet, (128, 128))
    block = "up_blocks.{}.attentions.{}.transformer_blocks.{}.attn{}.processor"
    assert layers == {2: [block.format(1, i, t, 1) for i in range(3) for t in range(2)],
                      4: [block.format(0, i, t, 1) for i in range(3) for t in range(10)]}
    grids = layer_grids(unet, (128, 128))
    assert {grids[n] for n in layers[2]} == {(64, 64)} and {grids[n] for n in layers[4]} == {(32, 32)}
    assert segmentation_layers(unet, (128, 128)) == (block.format(1, 2, 1, 1), block.format(0, 2, 9, 2))
    assert swap_layers(unet, (128, 128), grid=1) == {1: [], 2: layers[2]}
    spec = next(f for f in dataclasses.fields(CrossImageConfig) if f.name == "grid")
    assert spec.default is None and "SDXL" in spec.metadata["why"]
    with pytest.raises(VideditError, match="grid must be a power of two"):
        CrossImageConfig(grid=3)


def test_on_tiny_sdxl_the_swap_is_at_its_finest_decoder_level(tiny_sdxl, wolf_frames, appearance):
    """tiny-sdxl's one decoder level with attention, up_blocks.0 at half the latent grid, swaps in the
    latent window (counters 1..8 of 10 steps: steps 2..9, as the latent grid's on SD 1.x); the
    encoder's self-attention never does."""
    from tests.editing.attention_runs import Probe

    s = EditSettings(source_prompt="a wolf", target_prompt="a wolf", steps=10, guidance=1.0, strength=1.0,
                     editor="cross_image", editor_params={"appearance": appearance, "masked_adain": False})
    inv = invert_frames(tiny_sdxl, wolf_frames[:1, ::2, ::2], s)                # 16x16 latents
    plan = plan_of(tiny_sdxl, inv, s)
    swapped = sorted({n for proc in plan.processors.values() for m in proc.modules if isinstance(m, SwapAttention)
                      for n in m.names})
    assert swapped == [f"up_blocks.0.attentions.{i}.transformer_blocks.{t}.attn1.processor"
                       for i in range(3) for t in range(2)]
    encoder = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"
    plan, probe = with_probe(tiny_sdxl, plan, swapped[0])
    other = Probe([encoder])
    plan = dataclasses.replace(plan, processors={**plan.processors, **compose(tiny_sdxl.unet, [other], plan.info)})
    z = run_plan(tiny_sdxl, inv, s, plan)
    assert z.shape == (4, 1, 4, 16, 16) and torch.isfinite(z).all()
    taken = {swapped[0]: {}, encoder: {}}
    for step, layer, _, k, v in probe.seen + other.seen:
        # (halves, nb, fb, heads, T, d); branches: structure, appearance, output, plain
        taken[layer][step] = next((b for b in (1, 3, 0) if torch.equal(k[:, 2], k[:, b])
                                   and torch.equal(v[:, 2], v[:, b])), None)
    assert taken[swapped[0]] == {i: 1 if 2 <= i <= 9 else 3 for i in range(10)}
    assert taken[encoder] == {i: 3 for i in range(10)}


def test_masked_adain_on_sdxl_layout(tiny_sdxl, wolf_frames, appearance):
    """On SDXL's block layout (three levels, no decoder attention on the latent grid) at 16x16 latents:
    the masks come from the last 8x8 self-attention (up_blocks.1) and the last 4x4 cross-attention
    (up_blocks.0), found on the 8x8 grid and nearest-upsampled 2x to the latents."""
    from tests.editing.attention_runs import sdxl_shaped_unet
    from videdit.core.conditioning import set_pixels_per_latent
    from videdit.editing.cross_image import _upsample

    model = dataclasses.replace(tiny_sdxl, unet=sdxl_shaped_unet())
    set_pixels_per_latent(model.unet, model.vae_scale_factor)
    s = EditSettings(source_prompt="a wolf in a forest", target_prompt="a wolf in a forest", steps=5, guidance=1.0,
                     strength=1.0, editor="cross_image",
                     editor_params={"appearance": appearance, "object_noun": "wolf", "adain_window": (0.4, 1.0)})
    inv = invert_frames(model, wolf_frames[:1, ::2, ::2], s)                   # 16x16 latents
    plan = plan_of(model, inv, s)
    store = next(m for proc in plan.processors.values() for m in proc.modules if isinstance(m, SegmentationStore))
    assert store.self_layer == "up_blocks.1.attentions.2.transformer_blocks.1.attn1.processor"
    assert store.cross_layer == "up_blocks.0.attentions.2.transformer_blocks.2.attn2.processor"
    run_plan(model, inv, s, plan)
    steps = plan.callbacks[0]
    wolf = find_word(model.tokens("a wolf in a forest"), "wolf")
    for branch, mask in ((0, steps.found.structure), (1, steps.found.appearance)):
        assert store.self_maps[branch].shape == (1, 64, 64) and store.cross_maps[branch].shape[:2] == (1, 16)
        word = word_map(store.cross_maps[branch][0][:, wolf].mean(-1), (4, 4), (8, 8))
        small = object_mask(store.self_maps[branch][0], word)                   # (8, 8)
        assert mask.shape == (1, 16, 16) and torch.equal(mask[0], _upsample(small, (16, 16)))
    small = (torch.arange(64).view(8, 8) % 3 == 0).float()          # the upsampling, on a mask with content
    for size in ((16, 16), (15, 16)):                                # a 15-row latent grid rounds up to 8 rows
        big = _upsample(small, size)
        assert big.shape == size and all(torch.equal(big[dy::2, dx::2], small[:-(-(size[0] - dy) // 2)])
                                         for dy in (0, 1) for dx in (0, 1))
