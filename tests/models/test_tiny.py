"""tiny-random: Stable Diffusion's layout at a few million parameters, the same weights every build."""

import torch

from videdit.models.tiny import UNET_CONFIG, build_tiny_random, tiny_tokenizer


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
