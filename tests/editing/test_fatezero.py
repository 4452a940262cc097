"""FateZero on tiny-random: the maps come from the inversion (no source branch at edit time),
the middle-frame anchor on wide layers while inverting, fusion limited to small grids, the
blend on attention maps, and the presets' values.

Scaling: SD 1.5 at 512 px has 64x64 latents and FateZero fuses on the layers of <= 32x32 query
tokens (half the latent side), whose width is >= 640 channels (least_sc_channel), and draws the
blend mask from the 16x16 layers (a quarter of the side). tiny-random at 128 px has 16x16
latents: the same proportions are <= 8x8 = 64 tokens (its 64-channel layers: min_channels 64)
and the mask from the 4x4 layer (blend_factor 4)."""

import dataclasses
from pathlib import Path

import pytest
import torch

from tests.editing.attention_runs import preset_settings
from tests.video.clips import Probing
from videdit import io
from videdit.cli import _with_config, build_parser, temporal_modules
from videdit.attention import AttentionModule, layer_grids
from videdit.attention.stored import ANCHOR, KEYS, MAPS, QUERIES
from videdit.editing.fatezero import FuseSelf, LatentBlend, SourceWordMaps, StoredAttention, word_mask
from videdit.errors import VideditError
from videdit.inversion import InversionCache
from videdit.inversion.fatezero import stored_layers
from videdit.pipeline import EditSettings, edit_context, edit_latents, invert_frames
from videdit.video import TemporalStack

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SOURCE, TARGET = "a wolf in a forest", "a watercolor painting of a wolf in a forest"
STEPS, FRAMES, MID = 4, 4, 1                 # FateZero's 'mid': int(clip_length - 1) // 2
SMALL = 8 * 8                                # SD's 32x32 at 64x64 latents, scaled to tiny's 16x16
WIDE = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"     # 64 channels, 8x8
NARROW = "up_blocks.2.attentions.0.transformer_blocks.0.attn1.processor"   # 32 channels, 16x16
TINY_FATEZERO = dict(inversion="fatezero", inversion_params={"min_channels": 64, "max_tokens": SMALL},
                     editor="fatezero")


@pytest.fixture(scope="module")
def clip(shared_data):
    frames, _ = io.read_clip(shared_data / "videos" / "wolf.mp4", io.ReadOptions(size=(128, 128), max_frames=FRAMES))
    return frames


def settings(**kw):
    return EditSettings(source_prompt=SOURCE, target_prompt=TARGET, **{"steps": STEPS, **TINY_FATEZERO, **kw})


@pytest.fixture(scope="module")
def inverted(tiny, clip):
    s = settings()
    return s, invert_frames(tiny, clip, s)


class Probe(AttentionModule):
    """Records the conditional half's probabilities (step, frames, p (fb, heads, Tq, Tk)) on one layer."""

    needs_probs = True

    def __init__(self, layer):
        self.layer, self.seen = layer, []

    def applies(self, layer, cross):
        return layer == self.layer

    def probs(self, call, p):
        if not call.info.inverting:
            self.seen.append((call.info.step, call.info.frames, call.split(p)[-1, 0].clone()))
        return p


def ProbeModule(layer):
    return Probing(Probe(layer))


def unet_evals(tiny, run) -> int:
    """Frames x guidance halves x branches the UNet saw during ``run()``."""
    seen = []

    def count(module, args, kwargs):
        seen.append((args[0] if args else kwargs["sample"]).shape[0])

    handle = tiny.unet.register_forward_pre_hook(count, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return sum(seen)


# --- the maps come from the inversion ---------------------------------------------------------

def test_the_inversion_stores_the_small_layers_and_the_edit_runs_alone(tiny, inverted):
    s, inv = inverted
    grids = layer_grids(tiny.unet, (16, 16))
    small = {n for n, (h, w) in grids.items() if h * w <= SMALL}
    assert inv.method == "fatezero" and inv.unet_evals == STEPS and len(small) == 8   # 4 self, 4 cross
    assert {k.split(".", 1)[1] for k in inv.extras if not k.startswith(ANCHOR)} == small
    assert stored_layers(tiny.unet, (16, 16), SMALL)[WIDE] == "qk"   # 8 heads x 64 x 64 maps > 2 x 64 x 64 q, k
    assert inv.extras[QUERIES + WIDE].shape == (STEPS, FRAMES, 8, 64, 8)
    evals = unet_evals(tiny, lambda: edit_latents(tiny, inv, s))
    assert evals == FRAMES * 2 * STEPS   # the edit alone: one branch, two guidance halves
    assert not s.editor_spec.has_source_branch


def test_the_replayed_approximation_costs_twice_the_edit(tiny, clip):
    replay, _ = preset("fatezero-replay.yaml", steps=STEPS)
    inv = invert_frames(tiny, clip, replay)
    assert unet_evals(tiny, lambda: edit_latents(tiny, inv, replay)) == FRAMES * 4 * STEPS


def test_the_edit_reads_the_stored_maps(tiny, inverted):
    s, inv = inverted
    z = edit_latents(tiny, inv, s)
    flat = {k: torch.full_like(v, 1 / v.shape[-1]) if k.startswith(MAPS) else torch.zeros_like(v)
            for k, v in inv.extras.items()}   # uniform maps: q = k = 0 gives uniform softmax too
    moved = edit_latents(tiny, dataclasses.replace(inv, extras=flat), s)
    assert float((moved - z).norm() / z.norm()) > 1e-2


def test_an_inversion_without_maps_is_refused_before_inverting():
    with pytest.raises(VideditError, match="editor 'fatezero' starts from inversion 'fatezero', as its reference "
                                           "does; leave the inversion out"):
        EditSettings(source_prompt=SOURCE, target_prompt=TARGET, editor="fatezero", inversion="ddim")
    assert EditSettings(source_prompt=SOURCE, target_prompt=TARGET, editor="fatezero").inversion == "fatezero"


# --- FateZero's UNet while inverting and editing: the middle frame, on wide layers -----------------

def test_inverting_attends_to_the_middle_frame_on_wide_layers_only(tiny, clip):
    s = settings(inversion_params={"min_channels": 64, "max_tokens": 16 * 16})
    inv = invert_frames(tiny, clip, s)
    assert stored_layers(tiny.unet, (16, 16), 16 * 16)[NARROW] == "qk"
    for step in range(STEPS):
        wide, narrow = inv.extras[KEYS + WIDE][step], inv.extras[KEYS + NARROW][step]   # (F, heads, T, d)
        for f in range(FRAMES):
            assert torch.equal(wide[f], wide[MID])         # every frame's keys are the middle frame's
        assert all(not torch.allclose(narrow[f], narrow[MID], atol=1e-3) for f in range(FRAMES) if f != MID)
    assert inv.extras[ANCHOR + WIDE].tolist() == [[MID]] * FRAMES and ANCHOR + NARROW not in inv.extras
    apart = invert_frames(tiny, clip, settings(inversion_params={"min_channels": 65, "max_tokens": 16 * 16}))
    assert not torch.allclose(apart.extras[KEYS + WIDE][0, 0], apart.extras[KEYS + WIDE][0, MID], atol=1e-3)
    assert not any(k.startswith(ANCHOR) for k in apart.extras)


class KeyProbe(Probe):
    """Records the conditional half's keys (step, frames, k (fb, heads, T, d)) on one layer."""

    needs_probs = False

    def qkv(self, call, q, k, v):
        if not call.info.inverting:
            self.seen.append((call.info.step, call.info.frames, call.split(k)[-1, 0].clone()))
        return q, k, v

    def probs(self, call, p):
        return p


def test_the_edit_runs_the_inversions_anchors(tiny, inverted):
    s, inv = inverted
    probes = ProbeModule(WIDE), ProbeModule(NARROW)
    for p in probes:
        p.probe = KeyProbe(p.probe.layer)
    edit_latents(tiny, inv, dataclasses.replace(s, batch_size=3), temporal=TemporalStack(list(probes)))
    wide, narrow = ({f: k for step, frames, ks in p.probe.seen if step == 1 for f, k in zip(frames, ks)}
                    for p in probes)
    assert sorted(wide) == sorted(narrow) == list(range(FRAMES))
    assert all(torch.equal(wide[f], wide[MID]) for f in range(FRAMES))   # the middle frame's, in other batches too
    assert all(not torch.allclose(narrow[f], narrow[MID], atol=1e-3) for f in range(FRAMES) if f != MID)


def test_the_tune_a_video_layout_is_an_option_of_inversion_and_edit(tiny, clip, tmp_path):
    """anchor=sparse_causal: FateZero's default SparseCausalAttention_index [-1, 'first'] (for its
    Tune-A-Video-tuned checkpoints): frame f attends to frames f - 1 and 0, while inverting and editing."""
    s = settings(inversion_params={"anchor": "sparse_causal", "min_channels": 64, "max_tokens": SMALL}, batch_size=3)
    cache = InversionCache(tmp_path)
    inv = invert_frames(tiny, clip, s, cache=cache)
    assert inv.extras[ANCHOR + WIDE].tolist() == [[0, 0], [0, 0], [1, 0], [2, 0]]
    keys = inv.extras[KEYS + WIDE][0]                                       # (F, heads, 2T, d)
    assert keys.shape[-2] == 2 * 64 and torch.equal(keys[3, :, 64:], keys[0, :, :64])   # frame 3: [k2, k0]
    assert torch.equal(invert_frames(tiny, clip, s, cache=cache).extras[ANCHOR + WIDE], inv.extras[ANCHOR + WIDE])
    probe = ProbeModule(WIDE)
    probe.probe = KeyProbe(WIDE)
    edit_latents(tiny, inv, s, temporal=TemporalStack([probe]))   # the stored maps fit the edit's keys (2T)
    edit = {f: k for step, frames, ks in probe.probe.seen if step == 0 for f, k in zip(frames, ks)}
    k0 = edit[0][:, :64]                                                     # frame 0 attends to [0, 0]
    assert torch.equal(edit[0][:, 64:], k0) and torch.equal(edit[1][:, :64], k0)   # frame 1: [k0, k0]
    assert all(torch.equal(edit[f][:, 64:], k0) for f in range(FRAMES))     # every frame: the first frame's last
    assert not torch.allclose(edit[3][:, :64], k0, atol=1e-3)              # frame 3: its previous frame's first


# --- fusion on grids of <= max_tokens, for the replace fractions ------------------------------------

def fused_layers(tiny, inv, s):
    ctx = edit_context(tiny, inv, s)
    plan = s.editor_spec.plan(ctx, s.editor_config)
    out = {}
    for layer, proc in plan.processors.items():
        for m in proc.modules:
            out.setdefault(type(m).__name__, set()).add(layer)
    return out, [m for p in plan.processors.values() for m in p.modules], plan


def test_fusion_acts_on_the_layers_of_at_most_max_tokens(tiny, clip, inverted):
    s, inv = inverted
    grids = layer_grids(tiny.unet, (16, 16))
    fused, modules, _ = fused_layers(tiny, inv, s)
    assert fused["FuseSelf"] == {n for n, (h, w) in grids.items() if h * w <= 64 and n.endswith("attn1.processor")}
    assert fused["FuseCross"] == {n for n, (h, w) in grids.items() if h * w <= 64 and n.endswith("attn2.processor")}
    assert len(fused["FuseSelf"]) == 4 and NARROW not in fused["FuseSelf"]
    self_steps = {type(m).__name__: m.steps for m in modules if hasattr(m, "steps")}
    # the edit's 0.8: self-attention int(0.8 * 4) steps (attention_util.py), cross-attention int(0.8 * 5)
    # (ptp_utils.get_time_words_attention_alpha: steps + 1 alpha rows)
    assert self_steps == {"FuseSelf": range(0, 3), "FuseCross": range(0, 4)}
    only_mid = dataclasses.replace(s, editor_params={"max_tokens": 16})      # SD's 8x8 mid block, scaled
    fused, _, _ = fused_layers(tiny, inv, only_mid)
    assert fused["FuseSelf"] == {"mid_block.attentions.0.transformer_blocks.0.attn1.processor"}


def test_self_attention_is_the_stored_maps_in_the_replaced_steps(tiny, inverted):
    s, inv = inverted
    probe = ProbeModule(WIDE)
    edit_latents(tiny, inv, s, temporal=TemporalStack([*s.temporal_stack().modules, probe]))
    q, k = inv.extras[QUERIES + WIDE], inv.extras[KEYS + WIDE]
    scale = 8 ** -0.5
    for step, frames, p in probe.probe.seen:
        stored = ((q[step, list(frames)] @ k[step, list(frames)].transpose(-1, -2)) * scale).softmax(-1)
        same = torch.allclose(p, stored, atol=1e-5)
        assert same == (step < 3), step


def test_a_word_swap_spreads_a_word_over_more_tokens_and_refines_where_the_words_differ(tiny, inverted, caplog):
    """``p2preplace_edit``: the swap (``get_replacement_mapper``) where the prompts have as many words,
    else a refinement; "wolf" (4 character tokens, 2-5) -> "cat" (3): each of "cat"'s tokens takes a
    third of the stored maps of "wolf"'s, so the three are equal in the fused steps."""
    s, inv = inverted
    refine = edit_latents(tiny, inv, s)
    with caplog.at_level("INFO", logger="videdit.editing"):
        swap = edit_latents(tiny, inv, dataclasses.replace(s, editor_params={"mode": "replace"}))
    assert torch.equal(swap, refine) and "have 5 and 9 words, so the word swap is a refinement" in caplog.text
    cat = dataclasses.replace(s, target_prompt="a cat in a forest", editor_params={"mode": "replace"})
    probe = ProbeModule(WIDE.replace("attn1", "attn2"))
    edit_latents(tiny, inv, cat, temporal=TemporalStack([*cat.temporal_stack().modules, probe]))
    seen = {step: p for step, _, p in probe.probe.seen}
    for step in range(4):                                  # int(0.8 * (4 + 1)) cross-attention steps
        torch.testing.assert_close(seen[step][..., 2], seen[step][..., 4])
        torch.testing.assert_close(seen[step][..., 3], seen[step][..., 4])
        assert float((seen[step][..., 2] - seen[step][..., 5]).abs().max()) > 1e-4


# --- the blend mask blends attention maps --------------------------------------------------------

def test_the_blend_mixes_self_attention_rows_by_the_source_words_mask(tiny, inverted):
    s, inv = inverted
    s = dataclasses.replace(s, editor_params={"blend_words": ["wolf"], "blend_factor": 2,
                                              "blend_threshold": 0.9})   # random weights: near-flat maps
    _, modules, plan = fused_layers(tiny, inv, s)
    assert not any(isinstance(cb, LatentBlend) for cb in plan.callbacks)   # latents are not blended by default
    probe = ProbeModule(WIDE)
    edit_latents(tiny, inv, s, temporal=TemporalStack([*s.temporal_stack().modules, probe]))
    stored = StoredAttention(inv.extras)
    words = next(m for m in modules if isinstance(m, FuseSelf)).words
    assert isinstance(words, SourceWordMaps) and words.grid == (8, 8)
    kept = swapped = 0
    q, k = inv.extras[QUERIES + WIDE], inv.extras[KEYS + WIDE]
    for step, frames, p in probe.probe.seen:
        if step >= 3:
            continue
        f = list(frames)
        mask = word_mask(words.at(step, f), (8, 8), 0.9).flatten(1)          # (fb, 64): 1 keeps the edit's own rows
        base = ((q[step, f] @ k[step, f].transpose(-1, -2)) * 8 ** -0.5).softmax(-1)   # (fb, heads, 64, 64)
        rows_equal = (p - base).abs().amax(dim=(1, 3)) < 1e-5                # (fb, 64)
        assert torch.equal(rows_equal, mask == 0)
        kept, swapped = kept + int(mask.sum()), swapped + int((mask == 0).sum())
    assert kept > 0 and swapped > 0
    assert stored.layers()


def test_latent_blend_is_the_variant_over_its_steps(tiny, clip):
    s = settings(steps=10, editor_params={"blend_words": ["wolf"], "blend_factor": 4, "blend_latents": True,
                                          "target_blend_words": ["watercolor"]})
    inv = invert_frames(tiny, clip[:2], s)
    _, _, plan = fused_layers(tiny, inv, s)
    (blend,) = [cb for cb in plan.callbacks if isinstance(cb, LatentBlend)]
    assert blend.steps == range(2, 7)   # counter in (int(0.2 N), int(0.8 N)): steps 2..6 of 10
    assert blend.target is not None and blend.target.tokens
    with pytest.raises(VideditError, match="target_blend_words only shape the latent blend"):
        settings(editor_params={"target_blend_words": ["watercolor"]})


# --- presets ----------------------------------------------------------------------------------

def preset(name, **overrides):
    """The EditSettings the CLI makes from ``configs/NAME``, its temporal modules included."""
    args = _with_config(build_parser(), ["edit", "x.mp4", "-t", TARGET, "-s", SOURCE, "-o", "o.mp4", "--config",
                                         str(CONFIGS / name)])
    s = preset_settings(name, TARGET, source_prompt=SOURCE, temporal=temporal_modules(args), **overrides)
    return s, args


def test_the_preset_resolves_to_fatezeros_zero_shot_values():
    s, args = preset("fatezero.yaml")
    assert args.window == 8   # FateZero's n_sample_frame: one clip, one middle frame
    assert (s.inversion, s.editor, s.steps, s.guidance) == ("fatezero", "fatezero", 50, 7.5)
    i, e = s.inversion_config, s.editor_config
    assert (i.anchor, i.min_channels, i.max_tokens) == ("mid", 640, 1024)
    assert (e.mode, e.cross_replace, e.self_replace, e.max_tokens) == ("refine", 0.8, 0.8, 1024)
    assert (e.blend_self_attention, e.blend_latents, e.blend_threshold) == (True, False, 0.3)
    assert s.temporal_configs == () and not s.editor_spec.has_source_branch   # the anchors are the inversion's


def test_the_replay_preset_keeps_videdits_approximation_under_its_own_name():
    s, _ = preset("fatezero-replay.yaml")
    assert (s.inversion, s.editor, s.editor_config.self_replace) == ("ddim", "prompt_to_prompt", 0.9)
    ((spec, cf),) = s.temporal_configs
    assert (cf.mode, cf.min_channels) == ("sparse_causal", 0)
