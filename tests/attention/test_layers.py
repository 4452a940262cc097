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


def test_levels_by_depth_name_sd_blocks_and_map_onto_sdxl(tiny):
    """The default layers of Plug-and-Play and MasaCtrl, named by depth among the levels with
    attention, are the official SD 1.x names on SD's layout and the same depths on SDXL's (its
    first decoder level with attention is up_blocks.0, at 1/4 of the latents as SD's up_blocks.1)."""
    from tests.editing.attention_runs import sd_shaped, sdxl_shaped_unet
    from videdit.attention import attention_blocks, expand_levels, match_modules
    from videdit.editing.masactrl import MasaCtrlConfig
    from videdit.editing.plug_and_play import PlugAndPlayConfig

    sd, xl = sd_shaped(tiny).unet, sdxl_shaped_unet()
    assert attention_blocks(sd, "up") == [1, 2, 3] and attention_blocks(xl, "up") == [0, 1]
    assert attention_blocks(sd, "down") == [0, 1, 2] and attention_blocks(xl, "down") == [1, 2]
    assert expand_levels(sd, ["up@1+.*", "down@0.x", "plain"]) == ("up_blocks.2.*", "up_blocks.3.*",
                                                                      "down_blocks.0.x", "plain")
    assert expand_levels(xl, ["up@2.*"]) == ()                       # a level the model lacks: no glob

    def blocks(names):
        return sorted({n.split(".transformer_blocks")[0] for n in names})

    pnp, masa = PlugAndPlayConfig(), MasaCtrlConfig()
    assert blocks(choose_layers(sd, pnp.attention_layers, "p", "a", cross=False)) == [
        "up_blocks.1.attentions.1", "up_blocks.1.attentions.2", "up_blocks.2.attentions.0", "up_blocks.2.attentions.1",
        "up_blocks.2.attentions.2", "up_blocks.3.attentions.0", "up_blocks.3.attentions.1", "up_blocks.3.attentions.2"]
    assert match_modules(sd, pnp.feature_layers[0]) == ["up_blocks.1.resnets.1.conv2"]
    assert blocks(choose_layers(sd, masa.layers, "m", "l", cross=False)) == [
        f"up_blocks.{b}.attentions.{a}" for b in (2, 3) for a in range(3)]
    xl_pnp = choose_layers(xl, pnp.attention_layers, "p", "a", cross=False)
    assert blocks(xl_pnp) == ["up_blocks.0.attentions.1", "up_blocks.0.attentions.2", "up_blocks.1.attentions.0",
                              "up_blocks.1.attentions.1", "up_blocks.1.attentions.2"]
    assert len(xl_pnp) == 3 + 3 + 2 + 2 + 2                              # every transformer block of those
    assert match_modules(xl, pnp.feature_layers[0]) == ["up_blocks.0.resnets.1.conv2"]
    assert blocks(choose_layers(xl, masa.layers, "m", "l", cross=False)) == [
        f"up_blocks.1.attentions.{a}" for a in range(3)]
    grids = layer_grids(xl, (128, 128))                                  # SDXL at 1024 px
    assert {grids[n] for n in xl_pnp} == {(32, 32), (64, 64)} and grids[xl_pnp[0]] == (32, 32)


def test_word_map_factor_where_the_model_has_cross_attention(tiny):
    """Word masks read about 16x16 maps: SD at 512 px at 1/4; SDXL at 1024 px has no cross-attention
    at 1/8, so 1/4 (32x32); tiny-sdxl's 32x32 latents at 1/2."""
    from tests.editing.attention_runs import sd_shaped, sdxl_shaped_unet
    from videdit.editing.control import auto_map_factor

    assert auto_map_factor((64, 64), unet=sd_shaped(tiny).unet) == auto_map_factor((64, 64)) == 4
    assert auto_map_factor((128, 128)) == 8 and auto_map_factor((128, 128), unet=sdxl_shaped_unet()) == 4
    assert auto_map_factor((32, 32), unet=sdxl_shaped_unet()) == 2 and auto_map_factor((8, 8), unet=tiny.unet) == 1
