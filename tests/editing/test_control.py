"""The editors' shared controls (videdit/editing/control.py)."""

import pytest

from videdit.editing import get_editor
from videdit.errors import VideditError


def test_word_map_factor_auto_picks_about_16x16_maps():
    """prompt_to_prompt's blend_factor and masactrl's mask_factor: 0 picks the layers with maps of
    about 16x16 cells (SD's 64x64 latents -> 4, as the reference codes; the toy model's -> 1)."""
    from videdit.editing.control import auto_map_factor

    assert [auto_map_factor(s) for s in [(64, 64), (96, 96), (16, 16), (32, 48), (8, 8), (64, 40)]] == \
        [4, 4, 1, 2, 1, 2]
    for editor, option in (("prompt_to_prompt", "blend_factor"), ("masactrl", "mask_factor")):
        assert getattr(get_editor(editor).config(), option) == 0
        for bad in (-1, 3):
            with pytest.raises(VideditError, match=f"{option} must be 0 \\(auto\\) or a power of two"):
                get_editor(editor).config(**{option: bad})
