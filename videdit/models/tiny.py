"""The built-in ``tiny-random`` and ``tiny-sdxl`` models: Stable Diffusion's and Stable
Diffusion XL's architectures at a few million parameters, random weights from a fixed seed,
and a character-level CLIP tokenizer built offline.

Its images mean nothing. It exists so that tests and benchmarks exercise the real code
paths (VAE, CLIP text encoder, cross-attention UNet, DDIM schedule) in seconds on a CPU.
"""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TINY_SEED = 0
TINY_VERSION = "tiny-random-v1"
TINY_SDXL_VERSION = "tiny-sdxl-v1"

# Stable Diffusion 1.x's scheduler config (scaled-linear betas, leading spacing).
SD_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}

# sample_size: SD 1.5's 64 latents (native short side 64 x 8 = 512, as the model it stands in for), so that
# working sizes, budgets and defaults are SD 1.5's; the UNet's weights and outputs do not depend on it
UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(16, 32, 32, 32),  # three downsamplings: 8x, as in SD
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=64,
    scaling_factor=4.7,  # so that real frames encode to latents of about unit std, as SD's 0.18215 does
)

TEXT_CONFIG = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)


# tiny-sdxl: the sizes of diffusers' own SDXL test (get_dummy_components in
# tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py), at block widths (32, 64)
SDXL_UNET_CONFIG = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),   # SDXL's: no attention at the latent grid
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 2),
    projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + the pooled embedding's 32
    cross_attention_dim=64,                    # the two text encoders' 32 + 32
)

SDXL_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(32, 64),   # one downsampling: 2x
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    sample_size=64,
    scaling_factor=4.7,            # latents of real frames at about unit std, as tiny-random (SDXL: 0.13025)
)

SDXL_TEXT_CONFIG = dict(
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=5,
    num_attention_heads=4,
    max_position_embeddings=77,
    layer_norm_eps=1e-05,
    hidden_act="gelu",
    projection_dim=32,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)

# Stable Diffusion XL base's scheduler config (its scheduler_config.json; videdit samples with DDIM on it)
SDXL_SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "sample_max_value": 1.0,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_char_tokenizer(directory: Path) -> Path:
    """Write a CLIP tokenizer with a byte vocabulary and no merges: every word becomes its
    characters, so any prompt tokenizes, fully offline."""
    directory.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"})
    )
    return directory


@lru_cache(maxsize=1)
def tiny_tokenizer() -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(write_char_tokenizer(Path(tmp)))


def build_tiny_random() -> dict:
    """Build the tiny-random parts from config under a fixed seed (same weights every time)."""
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(**UNET_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **TEXT_CONFIG))
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler_config": dict(SD_SCHEDULER_CONFIG),
    }


# diffusers' own InstructPix2Pix test sizes (get_dummy_components in
# tests/pipelines/stable_diffusion/test_stable_diffusion_instruction_pix2pix.py): 8 input channels
# (the noisy latents' 4 and the source image's 4), a 2x VAE, a 5-layer CLIP text encoder
PIX2PIX_VERSION = "tiny-pix2pix-v1"
PIX2PIX_UNET_CONFIG = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    sample_size=32,
    in_channels=8,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
)
PIX2PIX_VAE_CONFIG = dict(
    block_out_channels=(32, 64),
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    latent_channels=4,
)
PIX2PIX_TEXT_CONFIG = dict(   # diffusers' sizes; the token ids are the char tokenizer's
    hidden_size=32,
    intermediate_size=37,
    layer_norm_eps=1e-05,
    num_attention_heads=4,
    num_hidden_layers=5,
    max_position_embeddings=77,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)
# timbrooks/instruct-pix2pix's scheduler/scheduler_config.json: Euler ancestral (its default linspace
# spacing) on Stable Diffusion's scaled-linear betas
PIX2PIX_SCHEDULER_CONFIG = {
    "_class_name": "EulerAncestralDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "trained_betas": None,
}


def build_tiny_pix2pix() -> dict:
    """The tiny-pix2pix parts (an InstructPix2Pix model: 8-channel UNet), each built after
    ``torch.manual_seed(TINY_SEED)`` as diffusers' test builds its dummy components."""
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(**PIX2PIX_UNET_CONFIG)
        torch.manual_seed(TINY_SEED)
        vae = AutoencoderKL(**PIX2PIX_VAE_CONFIG)
        torch.manual_seed(TINY_SEED)
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **PIX2PIX_TEXT_CONFIG))
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler_config": dict(PIX2PIX_SCHEDULER_CONFIG),
    }


def _save_sd_layout(directory: Path, parts: dict, pipeline: str, scheduler: str) -> Path:
    """Save SD-layout ``parts`` as a standard diffusers ``pipeline`` directory with a ``scheduler``
    from their scheduler config."""
    import diffusers

    pipe = getattr(diffusers, pipeline)(
        unet=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
        scheduler=getattr(diffusers, scheduler).from_config(parts["scheduler_config"]),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(directory)
    return Path(directory)


def save_tiny_pix2pix(directory: Path) -> Path:
    """Save tiny-pix2pix as a standard diffusers ``StableDiffusionInstructPix2PixPipeline``
    directory (tests of the local-directory path; what ``timbrooks/instruct-pix2pix`` holds)."""
    return _save_sd_layout(directory, build_tiny_pix2pix(), "StableDiffusionInstructPix2PixPipeline",
                           "EulerAncestralDiscreteScheduler")


def save_tiny_random(directory: Path) -> Path:
    """Save tiny-random as a standard diffusers Stable Diffusion directory (used by tests of
    the local-directory loading path and by the diffusers reference benchmarks)."""
    return _save_sd_layout(directory, build_tiny_random(), "StableDiffusionPipeline", "DDIMScheduler")


def build_tiny_sdxl() -> dict:
    """Build the tiny-sdxl parts (SDXL's layout: a CLIP text encoder and a second one with a
    projection, whose projected embedding is the pooled one) under a fixed seed."""
    from transformers import CLIPTextModelWithProjection

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
        vae = AutoencoderKL(**SDXL_VAE_CONFIG)
        text = CLIPTextConfig(vocab_size=len(tokenizer), **SDXL_TEXT_CONFIG)
        text_encoder = CLIPTextModel(text)
        text_encoder_2 = CLIPTextModelWithProjection(text)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer,
        "scheduler_config": dict(SDXL_SCHEDULER_CONFIG),
    }


def save_tiny_sdxl(directory: Path) -> Path:
    """Save tiny-sdxl as a standard diffusers ``StableDiffusionXLPipeline`` directory (with SDXL
    base's Euler scheduler config), for tests of the local-directory and hub loading paths."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    parts = build_tiny_sdxl()
    scheduler = EulerDiscreteScheduler.from_config(parts.pop("scheduler_config"))
    StableDiffusionXLPipeline(scheduler=scheduler, **parts).save_pretrained(directory)
    return Path(directory)
