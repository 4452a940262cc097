"""The toy model's architecture: its tokenizer, VAE, text encoder, UNet and scheduler, built
untrained from the sizes ``tools/train_toy.py`` trains with (``args``: any object with its
``size``, ``vae_channels``, ``text_dim``, ``text_layers``, ``max_length``, ``unet_channels``
and ``unet_layers``), so a training checkpoint can be loaded back into them."""

from __future__ import annotations

import json
import string
from pathlib import Path

from videdit.toy.world import CAPTION_WORDS


def build_tokenizer(max_length: int):
    """A CLIP-style byte-level BPE tokenizer whose merges make every world word one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=list(string.ascii_lowercase),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator([" ".join(CAPTION_WORDS)] * 4, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    # The trainer breaks ties between equally frequent pairs in a different order every run (the
    # token set is the same): number the tokens and order the merges canonically, so the same
    # seed gives the same tokenizer and a text encoder's embeddings fit any rebuild of it.
    merges.sort(key=lambda m: (len(m[0] + m[1]), m))
    rest = sorted((t for t in model["vocab"] if t not in specials), key=lambda t: (len(t.removesuffix("</w>")), t))
    vocab = {t: i for i, t in enumerate(specials + rest)}
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    for w in CAPTION_WORDS:
        if len(tok.tokenize(w)) != 1:
            raise RuntimeError(f"tokenizer splits world word {w!r}: {tok.tokenize(w)}")
    return tok


def save_tokenizer(tok, path: Path) -> None:
    """Save with tokenizer.json plus vocab.json/merges.txt (for older transformers)."""
    tok.save_pretrained(str(path))
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    (path / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def build_vae(args):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=tuple(args.vae_channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=args.size,
        scaling_factor=1.0,
    )


def build_text_encoder(args, tok):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=args.text_dim,
        intermediate_size=4 * args.text_dim,
        num_hidden_layers=args.text_layers,
        num_attention_heads=4,
        max_position_embeddings=args.max_length,
        hidden_act="quick_gelu",
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        projection_dim=args.text_dim,
    )
    return CLIPTextModel(cfg)


def build_unet(args):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=args.size // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=tuple(args.unet_channels),
        layers_per_block=args.unet_layers,
        cross_attention_dim=args.text_dim,
        attention_head_dim=4,  # diffusers reads this as the number of heads
        norm_num_groups=32,
    )


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
