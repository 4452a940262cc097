"""layers: glob selection over processor names, and the token grid each attention layer sees."""

from types import SimpleNamespace

import pytest
import torch

from videdit.attention import AttentionModule, attention_processors, compose, layer_grids, layers_at
from videdit.attention.layers import choose_layers, patterns, select_layers
from videdit.core.loop import CallInfo
from videdit.errors import VideditError

NAMES = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor",
]


def test_select_layers_keeps_the_order_and_takes_one_glob_or_several():
    assert select_layers(NAMES, "up_blocks.*") == NAMES[2:]
    assert select_layers(NAMES, ["*attn2*", "down_blocks.0.*attn1*"]) == [NAMES[0], NAMES[1], NAMES[3]]
    assert select_layers(NAMES, "*attn3*") == []
    assert select_layers(NAMES, "Up_blocks.*") == []                    # case-sensitive


def test_patterns_and_choose_layers():
    assert patterns("pnp", "layers", "up_*") == ("up_*",)
    assert patterns("pnp", "layers", ["a", "b"]) == ("a", "b")
    for bad in ("", [], ["a", ""], 3, [1]):
        with pytest.raises(VideditError, match="pnp layers must be a glob"):
            patterns("pnp", "layers", bad)
    unet = SimpleNamespace(attn_processors=dict.fromkeys(NAMES))
    assert choose_layers(unet, ["*"], "o", "n", cross=False) == [NAMES[0], NAMES[2]]
    assert choose_layers(unet, ["up_blocks.*"], "o", "n", cross=True) == [NAMES[3]]
    with pytest.raises(VideditError, match="match no attn1 layer"):
        choose_layers(unet, ["mid_block.*"], "o", "n", cross=False)


@pytest.mark.parametrize("latent", [(8, 8), (6, 10)])
def test_layer_grids_are_the_grids_the_layers_see(tiny, latent):
    seen = {}

    class Grid(AttentionModule):
        def qkv(self, call, q, k, v):
            seen[call.layer] = call.tokens
            return q, k, v

    x, e = torch.randn(1, 4, *latent), tiny.encode_text(["a"])
    with attention_processors(tiny.unet, compose(tiny.unet, [Grid()], CallInfo(frames=(0,)))):
        tiny.unet(x, torch.tensor([500]), encoder_hidden_states=e)
    grids = layer_grids(tiny.unet, latent)
    assert set(grids) == set(seen) and all(h * w == seen[n] for n, (h, w) in grids.items())
    quarter = layers_at(tiny.unet, latent, 2, cross=True)
    assert quarter and all(grids[n] == (-(-latent[0] // 2), -(-latent[1] // 2)) for n in quarter)
