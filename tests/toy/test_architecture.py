"""The toy model's architecture: a tokenizer with one token per world word, and parts sized by ``args``."""

from types import SimpleNamespace

import torch

from videdit.toy import CAPTION_WORDS
from videdit.toy.architecture import build_scheduler, build_tokenizer, build_vae


def test_tokenizer_maps_each_world_word_to_one_token_the_same_every_build():
    tok, again = build_tokenizer(16), build_tokenizer(16)
    ids = [tok.convert_tokens_to_ids(tok.tokenize(w)[0]) for w in CAPTION_WORDS]
    assert all(len(tok.tokenize(w)) == 1 for w in CAPTION_WORDS) and len(set(ids)) == len(set(CAPTION_WORDS))
    assert tok.get_vocab() == again.get_vocab() and tok.model_max_length == 16
    enc = tok("a red circle", padding="max_length", max_length=16).input_ids
    assert len(enc) == 16 and enc[:1] == [tok.bos_token_id] and enc[4] == tok.eos_token_id


def test_vae_downsamples_4x_and_scheduler_is_sd_s():
    args = SimpleNamespace(size=16, vae_channels=(16, 16, 16))
    vae = build_vae(args)
    assert vae.encode(torch.zeros(1, 3, 16, 16)).latent_dist.mean.shape == (1, 4, 4, 4)
    s = build_scheduler()
    torch.testing.assert_close(s.betas[[0, -1]], torch.tensor([0.00085, 0.012]))
    assert s.config.steps_offset == 1 and s.config.prediction_type == "epsilon"
