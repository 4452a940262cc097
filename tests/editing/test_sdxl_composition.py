"""Every inversion (under Prompt-to-Prompt) and every editor (after DDIM inversion) on tiny-sdxl:
it runs and gives finite latents of the frame's shape, or the settings refuse it on SDXL by name
with the reason (``Entry.check_model`` through ``pipeline.check_methods``)."""

import pytest
import torch

from videdit.editing import EDITORS
from videdit.errors import VideditError
from videdit.inversion import INVERSIONS
from videdit.pipeline import EditSettings, check_methods, edit_latents, invert_frames

STEPS = 2
SOURCE, TARGET = "a wolf in a forest", "a robot wolf in a forest"
_HALF = torch.zeros(32, 32)
_HALF[:, :16] = 1                                               # the left half of tiny-sdxl's 32x32 latents
EDIT_PARAMS = {"blended": {"mask": _HALF}, "differential": {"mask": 0.25 + 0.5 * _HALF},
               "sega": {"concepts": ["glasses"], "warmup": 0}, "ledits": {"concepts": ["glasses"], "masking": "noise"},
               # tiny-sdxl's decoder has one level with attention; MasaCtrl's default, the levels after the first
               # (SDXL's up_blocks.1), is checked on SDXL's layout in tests/attention/test_layers.py
               "masactrl": {"layers": "up@0.*attn1.processor", "mask_word": "wolf"},
               "prompt_to_prompt": {"blend_words": ["wolf"]}, "diffedit": {"n_samples": 2},
               # tiny-sdxl's decoder has one attention level, so no cross-attention below it for the masks; masked
               # AdaIN on SDXL's layout is checked in tests/editing/test_cross_image.py
               "cross_image": {"masked_adain": False}}
INVERSION_PARAMS = {"null_text": {"inner_steps": 2}}   # fewer Adam updates: the same code path, faster


def run(model, frames, inversion: str, editor: str) -> torch.Tensor:
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=STEPS, guidance=7.5, inversion=inversion,
                     inversion_params=INVERSION_PARAMS.get(inversion, {}), editor=editor,
                     editor_params=EDIT_PARAMS.get(editor, {}))
    check_methods(model, s)
    return edit_latents(model, invert_frames(model, frames, s), s)


def check(model, frames, inversion: str, editor: str) -> None:
    refusing = [spec for spec in (INVERSIONS[inversion], EDITORS[editor]) if "SDXL" not in spec.families]
    if refusing:
        with pytest.raises(VideditError) as e:
            run(model, frames, inversion, editor)
        kind = "inversion" if refusing[0] is INVERSIONS.get(inversion) else "editor"
        assert str(e.value) == f"{kind} {refusing[0].name!r} does not run on SDXL models: {refusing[0].refuses['SDXL']}"
        return
    z = run(model, frames, inversion, editor)
    assert z.shape == (1, 4, 32, 32) and torch.isfinite(z).all()
    assert float(z.std()) > 0.1


@pytest.mark.parametrize("editor", sorted(EDITORS))
def test_every_editor_after_ddim(tiny_sdxl, wolf_frames, editor):
    """After DDIM, or after the inversion the editor starts from (instruct_pix2pix: noise)."""
    check(tiny_sdxl, wolf_frames[:1], EDITORS[editor].inversion or "ddim", editor)


@pytest.mark.parametrize("inversion", sorted(INVERSIONS))
def test_every_inversion_under_prompt_to_prompt(tiny_sdxl, wolf_frames, inversion):
    check(tiny_sdxl, wolf_frames[:1], inversion, "prompt_to_prompt")


def test_pix2pix_zero_direction_from_sentences(tiny_sdxl, wolf_frames):
    """The edit direction from sentences is the mean of their SDXL embeddings, pooled row included:
    from one sentence each, it is the prompts' own direction."""
    from videdit.editing.pix2pix_zero import mean_embedding

    mean = mean_embedding(tiny_sdxl, ["a wolf", "a cat"])                         # (1, 78, 64)
    torch.testing.assert_close(mean[0], tiny_sdxl.encode_text(["a wolf", "a cat"]).mean(0))
    s = EditSettings(source_prompt=SOURCE, target_prompt=SOURCE, steps=STEPS, editor="pix2pix_zero",
                     editor_params={"source_sentences": ["a wolf"], "target_sentences": ["a cat"]})
    z = edit_latents(tiny_sdxl, invert_frames(tiny_sdxl, wolf_frames[:1], s), s)
    assert z.shape == (1, 4, 32, 32) and torch.isfinite(z).all()


def test_what_refuses_sdxl():
    """FateZero's fusion (its stored maps index 77 text tokens), and InstructPix2Pix, which runs on
    InstructPix2Pix models alone."""
    assert [n for n, spec in EDITORS.items() if "SDXL" not in spec.families] == ["fatezero", "instruct_pix2pix"]
    assert [n for n, spec in INVERSIONS.items() if "SDXL" not in spec.families] == []
