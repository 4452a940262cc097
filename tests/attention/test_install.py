import pytest
from diffusers.models.attention_processor import AttnProcessor

from videdit.attention import attention_processors, match_layers


def test_pattern_selects_layers_and_originals_return_after_an_exception(tiny):
    before = dict(tiny.unet.attn_processors)
    cross = match_layers(before, "*attn2.processor")
    assert cross and all("attn2" in n for n in cross)
    proc = AttnProcessor()
    with pytest.raises(RuntimeError, match="boom"):
        with attention_processors(tiny.unet, {"*attn2.processor": proc}) as installed:
            now = tiny.unet.attn_processors
            assert sorted(installed) == sorted(cross)
            assert all(now[n] is proc for n in cross)
            assert all(now[n] is before[n] for n in before if n not in cross)
            raise RuntimeError("boom")
    after = tiny.unet.attn_processors
    assert all(after[n] is before[n] for n in before)


def test_bad_plans_are_refused_and_nothing_changes(tiny):
    before = dict(tiny.unet.attn_processors)
    with pytest.raises(ValueError, match="matches no layer"):
        with attention_processors(tiny.unet, {"*nonexistent*": AttnProcessor()}):
            pass
    with pytest.raises(ValueError, match="matched twice"):
        with attention_processors(tiny.unet, {"*attn2*": AttnProcessor(), "up_blocks*attn2*": AttnProcessor()}):
            pass
    assert all(tiny.unet.attn_processors[n] is before[n] for n in before)


def test_empty_plan_is_a_no_op(tiny):
    before = dict(tiny.unet.attn_processors)
    with attention_processors(tiny.unet, None) as installed:
        assert installed == {}
    assert all(tiny.unet.attn_processors[n] is before[n] for n in before)
