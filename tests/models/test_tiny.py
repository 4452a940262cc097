"""tiny-random: Stable Diffusion's layout at a few million parameters, the same weights every build."""

import torch
from diffusers import UNet2DConditionModel

from videdit.models.tiny import TINY_SEED, UNET_CONFIG, build_tiny_random, tiny_tokenizer


def test_sizes_and_the_same_weights_every_build():
    a, b = build_tiny_random(), build_tiny_random()
    for part in ("unet", "vae", "text_encoder"):
        for (n, p), (_, q) in zip(a[part].named_parameters(), b[part].named_parameters()):
            assert torch.equal(p, q), (part, n)
    unet, vae = a["unet"], a["vae"]
    assert unet.config.in_channels == unet.config.out_channels == vae.config.latent_channels == 4
    assert tuple(unet.config.block_out_channels) == UNET_CONFIG["block_out_channels"] == (32, 64, 64)
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8                  # the VAE downsamples 8x
    assert a["text_encoder"].config.hidden_size == unet.config.cross_attention_dim == 32
    assert a["scheduler_config"]["num_train_timesteps"] == 1000 and a["scheduler_config"] is not b["scheduler_config"]


def test_char_tokenizer_splits_words_into_characters():
    tok = tiny_tokenizer()
    assert tok.tokenize("ab cd") == ["a", "b</w>", "c", "d</w>"]
    assert len(tok) == 2 + 2 * 256 and tok("é").input_ids[0] == tok.convert_tokens_to_ids("<|startoftext|>")


def test_sd15_geometry_changes_no_weight_and_no_output():
    """tiny-random's UNet says SD 1.5's sample_size (64 latents: 512 px native short side, the
    default working size); the same UNet built at sample_size 16 (its native side was 128) has the
    same weights, bit for bit, and the same output at a given size: sample_size is only config."""
    from videdit.models import load_model

    model = load_model("tiny-random")
    assert UNET_CONFIG["sample_size"] == model.unet.config.sample_size == 64
    assert (model.native_size, model.token_budget) == (512, 16384)   # SD 1.5's: 64 x 8; 4 x 64 x 64
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        old = UNet2DConditionModel(**{**UNET_CONFIG, "sample_size": 16})
    new, old = model.unet.state_dict(), old.state_dict()
    assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)
    x, text = torch.randn(2, 4, 8, 16), torch.randn(2, 77, 32)
    with torch.no_grad():
        a = model.unet(x, 500, encoder_hidden_states=text).sample
        b = UNet2DConditionModel(**{**UNET_CONFIG, "sample_size": 16}).eval()
        b.load_state_dict(new)
        assert torch.equal(a, b(x, 500, encoder_hidden_states=text).sample)
