"""Prompt-to-Prompt (videdit/editing/prompt_to_prompt.py): the attention math on hand-made maps
against the reference code's semantics, the editor's effect inside the UNet on tiny-random, and
its preset."""

import dataclasses
from pathlib import Path

import pytest
import torch

from tests.editing.attention_runs import SAME_LENGTH, SOURCE, STEPS, plan_of, rel, run_plan, settings
from videdit.attention import AttentionModule, compose
from videdit.cli import _with_config, build_parser, editor_params
from videdit.editing.prompt_to_prompt import (LocalBlend, refine_cross_attention, refinement_mapper,
                                              replacement_mapper, reweight_cross_attention)
from videdit.editing.words import spaced_words
from videdit.errors import VideditError
from videdit.pipeline import edit_latents

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def inverted(attention_inverted):
    return attention_inverted


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


def test_replacement_mapper_is_the_reference_get_replacement_mapper():
    """``seq_aligner.get_replacement_mapper_`` on the words' token positions, by hand: rows are the
    source's tokens, columns the target's."""
    a, cat, sits = ("a", [1]), ("cat", [2]), ("sits", [3])
    assert replacement_mapper([a, cat, sits], [a, ("dog", [2]), sits], 6) is None   # the identity
    m = replacement_mapper([a, cat, sits], [a, ("tiger", [2, 3]), ("sits", [4])], 7)
    expected = torch.zeros(7, 7)
    expected[0, 0] = expected[1, 1] = 1
    expected[2, 2] = expected[2, 3] = 0.5            # "cat" spread over "tiger"'s two tokens
    for j in (4, 5, 6):
        expected[j, j] = 1                           # after the last swap: mapper[j, j] (source "sits" unread)
    assert torch.equal(m, expected)
    m = replacement_mapper([a, ("wolf", [2, 3]), ("sits", [4]), ("here", [5])],
                           [a, ("dog", [2]), ("sits", [3]), ("there", [4, 5])], 8)
    expected = torch.zeros(8, 8)
    expected[0, 0] = expected[1, 1] = 1
    expected[2, 2] = expected[3, 2] = 1              # both of "wolf"'s tokens to "dog" (ratio 1 / 1)
    expected[4, 3] = 1                               # between swaps: mapper[i, j], aligned
    expected[5, 4] = expected[5, 5] = 0.5            # "here" -> "there"
    for j in (6, 7):
        expected[j, j] = 1
    assert torch.equal(m, expected)
    m = replacement_mapper([a, ("wolf", [2, 3]), sits], [a, ("dog", [2]), ("sits", [3])], 6)
    expected = torch.zeros(6, 6)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = expected[3, 2] = expected[3, 3] = expected[4, 4] = 1
    assert torch.equal(m, expected)                  # the source ends first: the last column stays zero
    with pytest.raises(VideditError, match="as many words, but the source has 3 and the target 2"):
        replacement_mapper([a, cat, sits], [a, cat], 6)


def test_words_are_grouped_as_get_word_inds_groups_them(tiny):
    assert spaced_words(["a", "cat,", "sits"], ["a", "cat", ",", "sits"]) == [[1], [2, 3], [4]]
    assert spaced_words(["a", "b"], ["a", "b", "c"]) == [[1], [2]]
    assert tiny.spaced_words("a wolf,  in") == [("a", [1]), ("wolf,", [2, 3, 4, 5, 6]), ("in", [7, 8])]


def test_refinement_mapper_is_the_reference_alignment():
    # seq_aligner.get_mapper on token sequences; positions past the target map to themselves
    mapper, alphas = refinement_mapper(["<s>", "a", "cat", "</s>"], ["<s>", "a", "big", "cat", "</s>"], 8)
    assert mapper.tolist() == [0, 1, -1, 2, 3, 5, 6, 7]
    assert alphas.tolist() == [1, 1, 0, 1, 1, 1, 1, 1]
    mapper, alphas = refinement_mapper(["<s>", "a", "cat", "</s>"], ["<s>", "a", "dog", "</s>"], 6)
    assert mapper.tolist() == [0, 1, -1, 3, 4, 5] and alphas.tolist() == [1, 1, 0, 1, 1, 1]


# --- the reference codes' defaults (google/prompt-to-prompt, the PIE-Bench code) -----------------

def test_defaults_are_the_reference_codes():
    """``models/p2p_editor.py`` (PIE-Bench) edits with ``is_replace_controller=False``
    (refinement) whatever the token counts; ``AttentionControlEdit.replace_self_attention``
    replaces self-attention in layers of at most ``32 ** 2`` tokens; ``LocalBlend`` takes
    ``start_blend=0.2``, ``th=(.3, .3)`` and a 3x3 max-pool (k = 1)."""
    from videdit.editing import EDITORS
    from videdit.editing.prompt_to_prompt import PromptToPromptConfig, _mode

    c = PromptToPromptConfig()
    assert (c.mode, c.self_replace_max_tokens) == ("refine", 1024)
    assert (c.blend_start, c.blend_threshold, c.blend_dilate) == (0.2, 0.3, 1)
    same = ["<s>", "a", "cat", "</s>"], ["<s>", "a", "dog", "</s>"], "a cat", "a dog"
    auto = PromptToPromptConfig(mode="auto")
    assert _mode(c, *same) == "refine" and _mode(auto, *same) == "replace"
    assert _mode(auto, ["<s>", "a", "c", "at", "</s>"], ["<s>", "a", "dog", "</s>"], "a cat", "a dog") == "replace"
    assert _mode(auto, ["<s>", "a", "cat", "</s>"], ["<s>", "a", "big", "dog", "</s>"], "a cat", "a big dog") == \
        "refine"
    assert "google/prompt-to-prompt" in EDITORS["prompt_to_prompt"].reference


def test_self_attention_is_replaced_up_to_32x32(tiny):
    """On SD's layout at 512 px (64x64 latents) the source's self-attention maps go to the
    32x32, 16x16 and 8x8 layers, not to the 64x64 ones (``att_replace.shape[2] <= 32 ** 2``)."""
    from tests.editing.attention_runs import sd_shaped
    from videdit.editing.control import InjectQKV
    from videdit.inversion import Inversion
    from videdit.pipeline import EditSettings

    model = sd_shaped(tiny)
    inv = Inversion(method="ddim", trajectory=torch.zeros(STEPS + 1, 1, 4, 64, 64))
    plan = plan_of(model, inv, EditSettings(source_prompt=SOURCE, target_prompt=SAME_LENGTH, steps=STEPS,
                                            editor="prompt_to_prompt"))
    replaced = sorted({name.split(".transformer_blocks")[0] for name, proc in plan.processors.items()
                       if any(isinstance(m, InjectQKV) for m in proc.modules)})
    assert replaced == ["down_blocks.1.attentions.0", "down_blocks.1.attentions.1", "down_blocks.2.attentions.0",
                        "down_blocks.2.attentions.1", "mid_block.attentions.0"] + [
                           f"up_blocks.{b}.attentions.{a}" for b in (1, 2) for a in range(3)]


def test_local_blend_mask_is_the_reference_local_blend():
    """``LocalBlend.get_mask``: token maps summed, max-pooled 3x3 at their own grid, upsampled
    by nearest neighbour, divided by the maximum, > th; ``mask[:1] + mask`` joins the source
    words' mask (source branch) and the target words' (target branch)."""
    from videdit.editing.prompt_to_prompt import GridStore, blend_mask

    maps = torch.zeros(1, 2, 4, 4)                      # (F, tokens, 4x4 cells)
    maps[0, 0, 1, 1] = 1.0
    maps[0, 1, 3, 3] = 0.2
    mask = blend_mask(maps, (16, 16), 0.3)
    assert mask.shape == (1, 1, 16, 16)
    assert int(mask.sum()) == 9 * 16                    # the 3x3 cells around (1, 1), each 4x4 latent pixels
    assert torch.equal(mask[0, 0, :12, :12], torch.ones(12, 12))
    assert int(blend_mask(maps, (16, 16), 0.1).sum()) == 12 * 16   # and the three cells of 0.2 beside them
    assert int(blend_mask(maps, (16, 16), 0.3, radius=0).sum()) == 16
    store = GridStore([7, 9], n_frames=1, layers=[])
    store.total, store.count = torch.zeros(2, 1, 2, 4, 4), torch.ones(1)   # (branches, F, tokens, 4, 4)
    store.total[0, 0, 0, 0, 0] = 1.0                    # the source word, in the source branch
    store.total[1, 0, 1, 3, 3] = 1.0                    # the target word, in the target branch
    store.total[1, 0, 0, 0, 3] = 1.0                    # the source word's map in the target branch: unread
    joined = LocalBlend(store, 1, range(STEPS), 0.3, 1).mask((16, 16))
    assert int(joined.sum()) == 2 * 4 * 16          # 2x2 cells at each corner the words' maps name
    assert joined[0, 0, 0, 0] == 1 and joined[0, 0, 15, 15] == 1 and joined[0, 0, 0, 15] == 0


# --- the editor on tiny-random -----------------------------------------------------------------

def cross_maps(tiny, inv, s, layer: str) -> list[tuple[int, torch.Tensor]]:
    """(step, the conditional half's cross-attention maps (nb, fb, heads, Tq, L)) of ``layer`` at each
    of its calls in the edit of ``s``, as the editor's modules leave them."""
    seen = []

    class Maps(AttentionModule):
        needs_probs, cross = True, True

        def applies(self, name, cross):
            return name == layer

        def probs(self, call, p):
            seen.append((call.info.step, call.split(p)[-1].clone()))
            return p

    plan = plan_of(tiny, inv, s)
    procs = dict(plan.processors)
    procs.update(compose(tiny.unet, [*plan.processors[layer].modules, Maps()], plan.info))
    run_plan(tiny, inv, s, dataclasses.replace(plan, processors=procs))
    return seen


def test_word_swap_needs_equal_word_counts(tiny, inverted):
    s, inv, _ = inverted
    with pytest.raises(VideditError, match="as many words, but the source has 5 and the target 6.*refine"):
        edit_latents(tiny, inv, settings(s, "prompt_to_prompt", mode="replace"))
    with pytest.raises(VideditError, match="'reweight' alone.*as many tokens, but the source has 16 and the target 21"):
        edit_latents(tiny, inv, settings(s, "prompt_to_prompt", mode="reweight", reweight={"robot": 2}))
    z = edit_latents(tiny, inv, settings(s, "prompt_to_prompt", target=SAME_LENGTH, mode="replace"))
    assert torch.isfinite(z).all() and rel(z, inverted[2]) > 1e-3
    for mode, extra in (("replace", {}), ("reweight", {"reweight": {"robot": 2}})):   # no source prompt: asked for
        with pytest.raises(VideditError, match=f"^prompt_to_prompt mode '{mode}' compares the source prompt with "
                                               "the target word by word; give the source prompt"):
            edit_latents(tiny, inv, dataclasses.replace(settings(s, "prompt_to_prompt", mode=mode, **extra),
                                                        source_prompt=" "))


def test_word_swap_of_unequal_token_counts_spreads_the_words_map(tiny, inverted):
    """"a wolf ..." -> "a cat ...": 4 character tokens (2-5) to 3 (2-4); every target token of "cat"
    takes a third of the sum of the source's four maps, tokens before the swap their own, and from
    the swap's end on the target's token j the source's token j (``mapper[j, j]``) but the last,
    as the reference."""
    s, inv, _ = inverted
    s = settings(s, "prompt_to_prompt", target="a cat in a forest", mode="replace", cross_replace=0.4,
                 self_replace=0.0)
    seen = cross_maps(tiny, inv, s, "up_blocks.2.attentions.1.transformer_blocks.0.attn2.processor")
    step, p = seen[0]
    src, tgt = p[0], p[1]
    assert step == 0
    torch.testing.assert_close(tgt[..., :2], src[..., :2])
    for n in (2, 3, 4):
        torch.testing.assert_close(tgt[..., n], src[..., 2:6].sum(-1) / 3)
    torch.testing.assert_close(tgt[..., 5:-1], src[..., 5:-1])
    assert rel(tgt[..., 5], src[..., 6]) > 1e-2    # not the source's "in" token (6): the reference's tail
    assert not tgt[..., -1].any()                  # its loop ends at the source's last token: column 76 unread
    late = [q for st, q in seen if st >= 2]         # int(0.4 * (5 + 1)) = 2 steps edited
    assert late and all(rel(q[1][..., 2:5], q[0][..., 2:5]) > 1e-3 for q in late)


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
    seen = cross_maps(tiny, inv, s, "up_blocks.2.attentions.1.transformer_blocks.0.attn2.processor")
    for step, p in seen:  # p: (nb, fb, heads, Tq, L)
        same = torch.equal(p[1], p[0])
        assert same == (step < 2), step  # int(0.4 * 5) = 2 steps replaced


def test_reweight_scales_the_words_maps(tiny, inverted):
    s, inv, _ = inverted
    s = settings(s, "prompt_to_prompt", target=SOURCE, mode="reweight", reweight={"wolf": 3.0}, self_replace=0.0)
    _, p = cross_maps(tiny, inv, s, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor")[0]   # step 0
    wolf = [2, 3, 4, 5]  # w, o, l, f</w> after <|startoftext|> and "a</w>"
    torch.testing.assert_close(p[1][..., wolf], 3 * p[0][..., wolf])
    others = [i for i in range(p.shape[-1]) if i not in wolf]
    torch.testing.assert_close(p[1][..., others], p[0][..., others])


def test_local_blend_keeps_the_source_outside_the_mask(tiny, inverted, monkeypatch):
    s, inv, rec = inverted
    masks = []
    original = LocalBlend.mask

    def recorded(self, latent):
        m = original(self, latent)
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
    monkeypatch.setattr(LocalBlend, "mask", lambda self, latent: half)
    z = edit_latents(tiny, inv, settings(s, "prompt_to_prompt", blend_words=["wolf"], blend_start=0.0))
    assert rel(z[..., 4:], rec[..., 4:]) <= 1e-4
    assert rel(z[..., :4], rec[..., :4]) > 1e-2


# --- preset ------------------------------------------------------------------------------------

def test_car_turn_preset_is_the_published_case():
    args = _with_config(build_parser(), ["edit", "x", "-t", "t", "-o", "o.mp4", "--config",
                                         str(CONFIGS / "p2p-refine-reweight.yaml"), "--reweight", "jeep=2"])
    params = editor_params(args)
    assert params["cross_replace"] == params["self_replace"] == 0.8
    assert params["reweight"] == {"jeep": 2.0}   # the flag replaces the file's value
