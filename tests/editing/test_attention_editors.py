"""Attention editors (Prompt-to-Prompt, Plug-and-Play, MasaCtrl, cross-image attention): the
attention math on hand-made maps against the reference code's semantics, and each editor's
effect measured inside the UNet on tiny-random."""

import dataclasses

import pytest
import torch

from videdit.attention import AttentionModule, attention_processors, compose, layer_grids, module_hooks
from videdit.core import make_schedule
from videdit.editing import get_editor
from videdit.editing.prompt_to_prompt import (LocalBlend, refine_cross_attention, refinement_mapper,
                                              reweight_cross_attention)
from videdit.errors import VideditError
from videdit.pipeline import EditSettings, edit_context, edit_latents, invert_frames, reconstruct

SOURCE, TARGET = "a wolf in a forest", "a robot wolf in a forest"
SAME_LENGTH = "a bear in a forest"   # as many (character) tokens as SOURCE on tiny-random
STEPS = 5


def rel(a, b):
    return float((a - b).norm() / b.norm())


# --- the attention math on hand-made maps ------------------------------------------------------

BASE = torch.tensor([[[0.4, 0.3, 0.2, 0.1],
                      [0.1, 0.2, 0.3, 0.4]]])  # (h=1, p=2, w=4): the source's maps


def test_refine_takes_aligned_tokens_from_the_source_and_keeps_new_ones():
    # AttentionRefine: attn_base[:, :, mapper].permute(2, 0, 1, 3) * alphas + own * (1 - alphas)
    own = torch.tensor([[[[0.25, 0.25, 0.25, 0.25],
                          [0.7, 0.1, 0.1, 0.1]]]])  # (b=1, h, p, n)
    mapper = torch.tensor([[0, -1, 1, 2]])          # target token 1 is new
    alphas = torch.tensor([[1., 0., 1., 1.]])
    out = refine_cross_attention(BASE, own, mapper, alphas)
    expected = torch.tensor([[[[0.4, 0.25, 0.3, 0.2],
                               [0.1, 0.1, 0.2, 0.3]]]])
    torch.testing.assert_close(out, expected)


def test_reweight_scales_the_chosen_tokens():
    # AttentionReweight: attn_base[None] * equalizer[:, None, None, :]
    out = reweight_cross_attention(BASE[0][None], torch.tensor([[1., 10., 1., 0.5]]))
    torch.testing.assert_close(out, torch.tensor([[[[0.4, 3.0, 0.2, 0.05],
                                                     [0.1, 2.0, 0.3, 0.2]]]]))


def test_refinement_mapper_is_the_reference_alignment():
    # seq_aligner.get_mapper on token sequences; positions past the target map to themselves
    mapper, alphas = refinement_mapper(["<s>", "a", "cat", "</s>"], ["<s>", "a", "big", "cat", "</s>"], 8)
    assert mapper.tolist() == [0, 1, -1, 2, 3, 5, 6, 7]
    assert alphas.tolist() == [1, 1, 0, 1, 1, 1, 1, 1]
    mapper, alphas = refinement_mapper(["<s>", "a", "cat", "</s>"], ["<s>", "a", "dog", "</s>"], 6)
    assert mapper.tolist() == [0, 1, -1, 3, 4, 5] and alphas.tolist() == [1, 1, 0, 1, 1, 1]


# --- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inverted(tiny, wolf_frames):
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=STEPS, guidance=7.5)
    inv = invert_frames(tiny, wolf_frames[:1], s)
    return s, inv, reconstruct(tiny, inv, s)


def settings(s, editor, target=TARGET, **params):
    return dataclasses.replace(s, editor=editor, target_prompt=target, editor_params=params)


def plan_of(tiny, inv, s):
    """The editor's plan, built as edit_latents builds it."""
    return s.editor_spec.plan(edit_context(tiny, inv, s), s.editor_config)


class Probe(AttentionModule):
    """Records (step, layer, q, k, v) as the modules before it left them."""

    def __init__(self, layers, cross=None):
        self.layers_set, self.cross, self.seen = set(layers), cross, []

    def applies(self, layer, cross):
        return layer in self.layers_set

    def qkv(self, call, q, k, v):
        self.seen.append((call.info.step, call.layer, *(call.split(t).clone() for t in (q, k, v))))
        return q, k, v


def with_probe(tiny, plan, layer, probe=None):
    """The plan with ``probe`` composed after its modules on ``layer``."""
    probe = probe or Probe([layer])
    procs = dict(plan.processors)
    procs.update(compose(tiny.unet, [*plan.processors[layer].modules, probe], plan.info))
    return dataclasses.replace(plan, processors=procs), probe


def run_plan(tiny, inv, s, plan, probes=None):
    """Denoise the plan as edit_latents does; ``probes``: forward hooks run after the plan's."""
    from videdit.core import denoise

    schedule = make_schedule(tiny.scheduler_config, s.steps)
    with attention_processors(tiny.unet, plan.processors), module_hooks(tiny.unet, plan.hooks), \
            module_hooks(tiny.unet, probes):
        return denoise(tiny.unet, plan.x, schedule, plan.branches, callbacks=plan.callbacks, info=plan.info)


# --- Prompt-to-Prompt --------------------------------------------------------------------------

def test_word_swap_needs_equal_token_counts(tiny, inverted):
    s, inv, _ = inverted
    with pytest.raises(VideditError, match="as many tokens.*source has 16 and the target 21.*refine"):
        edit_latents(tiny, inv, settings(s, "prompt_to_prompt", mode="replace"))
    z = edit_latents(tiny, inv, settings(s, "prompt_to_prompt", target=SAME_LENGTH, mode="replace"))
    assert torch.isfinite(z).all() and rel(z, inverted[2]) > 1e-3


def test_unknown_words_and_options_are_errors(tiny, inverted):
    s, inv, _ = inverted
    with pytest.raises(VideditError, match=r"'tiger' is in neither prompt.*\['a', 'wolf', 'in', 'a', 'forest'\]"):
        edit_latents(tiny, inv, settings(s, "prompt_to_prompt", blend_words=["tiger"]))
    with pytest.raises(VideditError, match=r"'tiger' is not a word of the prompt 'a robot wolf.*'robot'"):
        edit_latents(tiny, inv, settings(s, "prompt_to_prompt", reweight={"tiger": 2}))
    with pytest.raises(VideditError, match="does not take colour"):
        settings(s, "prompt_to_prompt", colour=1)
    for bad in ({"mode": "swap"}, {"cross_replace": 1.5}, {"reweight": {"wolf": -1}}, {"blend_factor": 3}):
        with pytest.raises(VideditError):
            settings(s, "prompt_to_prompt", **bad)


def test_cross_attention_of_the_target_is_the_sources_within_the_window(tiny, inverted):
    s, inv, _ = inverted
    s = settings(s, "prompt_to_prompt", target=SAME_LENGTH, mode="replace", cross_replace=0.4, self_replace=0.0)
    layer = "up_blocks.2.attentions.1.transformer_blocks.0.attn2.processor"

    class Maps(AttentionModule):
        needs_probs, cross, seen = True, True, []

        def applies(self, name, cross):
            return name == layer

        def probs(self, call, p):
            self.seen.append((call.info.step, call.split(p)[-1].clone()))  # conditional half
            return p

    plan = plan_of(tiny, inv, s)
    maps = Maps()
    procs = dict(plan.processors)
    procs.update(compose(tiny.unet, [*plan.processors[layer].modules, maps], plan.info))
    run_plan(tiny, inv, s, dataclasses.replace(plan, processors=procs))
    for step, p in maps.seen:  # p: (nb, fb, heads, Tq, L)
        same = torch.equal(p[1], p[0])
        assert same == (step < 2), step  # int(0.4 * 5) = 2 steps replaced


def test_reweight_scales_the_words_maps(tiny, inverted):
    s, inv, _ = inverted
    s = settings(s, "prompt_to_prompt", target=SOURCE, mode="reweight", reweight={"wolf": 3.0}, self_replace=0.0)
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"
    seen = []

    class Maps(AttentionModule):
        needs_probs, cross = True, True

        def applies(self, name, cross):
            return name == layer

        def probs(self, call, p):
            seen.append(call.split(p)[-1].clone())
            return p

    plan = plan_of(tiny, inv, s)
    procs = dict(plan.processors)
    procs.update(compose(tiny.unet, [*plan.processors[layer].modules, Maps()], plan.info))
    run_plan(tiny, inv, s, dataclasses.replace(plan, processors=procs))
    wolf = [2, 3, 4, 5]  # w, o, l, f</w> after <|startoftext|> and "a</w>"
    p = seen[0]          # step 0: within cross_replace
    torch.testing.assert_close(p[1][..., wolf], 3 * p[0][..., wolf])
    others = [i for i in range(p.shape[-1]) if i not in wolf]
    torch.testing.assert_close(p[1][..., others], p[0][..., others])


def test_local_blend_keeps_the_source_outside_the_mask(tiny, inverted, monkeypatch):
    s, inv, rec = inverted
    masks = []
    original = LocalBlend.mask

    def recorded(self):
        m = original(self)
        masks.append(m)
        return m

    monkeypatch.setattr(LocalBlend, "mask", recorded)
    # tiny-random's maps are nearly flat (max-normalised, 0.86..1): a high threshold makes a partial mask
    s = settings(s, "prompt_to_prompt", blend_words=["wolf", "robot"], blend_threshold=0.95, blend_start=0.0,
                 blend_factor=1, blend_dilate=0)
    z = edit_latents(tiny, inv, s)
    assert len(masks) == STEPS
    mask = masks[-1][:, 0]                    # (F, h, w), the last step's: what the output keeps
    outside = mask == 0
    assert 0 < outside.sum() < outside.numel(), "a partial mask on these maps"
    inside = ~outside
    outside, inside = outside[:, None].expand_as(z), inside[:, None].expand_as(z)
    assert float((z - rec)[outside].abs().max()) <= 1e-4 * float(rec.abs().max())
    assert float((z - rec)[inside].abs().max()) > 1e-2


def test_local_blend_with_a_forced_mask(tiny, inverted, monkeypatch):
    s, inv, rec = inverted
    half = torch.zeros(1, 1, 8, 8)
    half[..., :4] = 1
    monkeypatch.setattr(LocalBlend, "mask", lambda self: half)
    z = edit_latents(tiny, inv, settings(s, "prompt_to_prompt", blend_words=["wolf"], blend_start=0.0))
    assert rel(z[..., 4:], rec[..., 4:]) <= 1e-4
    assert rel(z[..., :4], rec[..., :4]) > 1e-2


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
    for editor in ("plug_and_play", "masactrl", "cross_image"):
        plan = plan_of(tiny, inv, settings(s, editor))
        assert plan.processors and not explicit(plan), editor
        assert all(n.endswith("attn1.processor") for n in plan.processors), editor
    blend = plan_of(tiny, inv, settings(s, "prompt_to_prompt", blend_words=["wolf"], blend_factor=2))
    assert explicit(blend) == cross


# --- Plug-and-Play -----------------------------------------------------------------------------

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


# --- MasaCtrl ----------------------------------------------------------------------------------

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


# --- cross-image attention ---------------------------------------------------------------------

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


# --- frame batches -----------------------------------------------------------------------------

@pytest.mark.parametrize("editor,params", [
    ("prompt_to_prompt", {"blend_words": ["wolf"], "blend_factor": 2, "blend_start": 0.0}),
    ("masactrl", {"mask_word": "wolf", "mask_factor": 2, "start": 0.0}),
    ("plug_and_play", {}),
])
def test_frame_batches_do_not_change_the_edit(tiny, wolf_frames, editor, params):
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, editor=editor, editor_params=params)
    inv = invert_frames(tiny, wolf_frames, s)   # two frames: per-frame maps and masks, one or two per UNet call
    one, two = (edit_latents(tiny, inv, dataclasses.replace(s, batch_size=b)) for b in (1, 2))
    torch.testing.assert_close(one, two, rtol=0, atol=1e-5)


def test_word_map_factor_auto_picks_about_16x16_maps():
    """prompt_to_prompt's blend_factor and masactrl's mask_factor: 0 picks the layers with maps of
    about 16x16 cells (SD's 64x64 latents -> 4, as the reference codes; the toy model's -> 1)."""
    from videdit.editing.control import auto_map_factor

    assert [auto_map_factor(s) for s in [(64, 64), (96, 96), (16, 16), (32, 48), (8, 8), (64, 40)]] == [4, 4, 1, 2, 1, 2]
    for editor, option in (("prompt_to_prompt", "blend_factor"), ("masactrl", "mask_factor")):
        assert getattr(get_editor(editor).config(), option) == 0
        for bad in (-1, 3):
            with pytest.raises(VideditError, match=f"{option} must be 0 \\(auto\\) or a power of two"):
                get_editor(editor).config(**{option: bad})
