"""Write a diffusers Stable Diffusion (1.x or XL) model as one original-layout (CompVis/LDM, or
Stability's SGM for SDXL) checkpoint, the layout of the single ``.safetensors`` files people
download, so that tests exercise diffusers' single-file conversion on a model built in code.

The key maps follow diffusers' ``scripts/convert_diffusers_to_original_stable_diffusion.py`` and
``convert_diffusers_to_original_sdxl.py``, with the block counts read from the model's config
instead of SD 1.5's fixed 4 blocks x 2 layers (SDXL's 3 x 2), so the tiny models convert too; SDXL's
second text encoder goes into OpenCLIP's layout, the inverse of diffusers'
``single_file_utils.convert_open_clip_checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def _rename(key: str, prefixes: list[tuple[str, str]]) -> str:
    """Replace the longest diffusers prefix of ``key`` by its LDM counterpart."""
    for hf, ldm in sorted(prefixes, key=lambda p: -len(p[0])):
        if key.startswith(hf):
            return ldm + key[len(hf):]
    return key


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    cfg = unet.config
    lpb, n = cfg.layers_per_block, len(cfg.block_out_channels)
    prefixes = [
        ("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.0.", "middle_block.0."), ("mid_block.resnets.1.", "middle_block.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2."),  # SDXL's
    ]
    for i in range(n):
        for j in range(lpb):  # down block i: lpb (resnet, attention) layers, then a downsampler
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{i * (lpb + 1) + j + 1}.0."))
            prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{i * (lpb + 1) + j + 1}.1."))
        prefixes.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (lpb + 1)}.0.op."))
        for j in range(lpb + 1):  # up block i: lpb + 1 layers, the upsampler after the last
            prefixes.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{i * (lpb + 1) + j}.0."))
            prefixes.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{i * (lpb + 1) + j}.1."))
        has_attention = "CrossAttn" in cfg.up_block_types[i]
        upsampler = f"output_blocks.{i * (lpb + 1) + lpb}.{2 if has_attention else 1}."
        prefixes.append((f"up_blocks.{i}.upsamplers.0.", upsampler))
    resnet = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
              ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
    out = {}
    for k, v in unet.state_dict().items():
        if "resnets" in k:
            for hf, ldm in resnet:
                k = k.replace(f".{hf}.", f".{ldm}.")
        out["model.diffusion_model." + _rename(k, prefixes)] = v
    return out


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    n = len(vae.config.block_out_channels)
    prefixes = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for part in ("encoder", "decoder"):
        prefixes += [(f"{part}.mid_block.resnets.{k}.", f"{part}.mid.block_{k + 1}.") for k in range(2)]
        prefixes.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
    for i in range(n):
        prefixes.append((f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."))
        prefixes.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        prefixes.append((f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block."))  # reversed in LDM
        prefixes.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    attention = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                 ("to_out.0.", "proj_out.")]
    out = {}
    for k, v in vae.state_dict().items():
        new = _rename(k, prefixes).replace("conv_shortcut", "nin_shortcut")
        if ".mid.attn_1." in new:
            for hf, ldm in attention:
                new = new.replace(f".attn_1.{hf}", f".attn_1.{ldm}")
            if v.ndim == 2:
                v = v[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out["first_stage_model." + new] = v
    return out


def save_ldm_checkpoint(parts: dict, path: Path) -> Path:
    """``parts`` (unet, vae, text_encoder) -> one original-layout ``.safetensors`` file at ``path``."""
    state = {**unet_to_ldm(parts["unet"]), **vae_to_ldm(parts["vae"])}
    for k, v in parts["text_encoder"].state_dict().items():  # transformers 5 drops the "text_model." prefix
        state["cond_stage_model.transformer.text_model." + k.removeprefix("text_model.")] = v
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return Path(path)


def _clip_to_openclip(encoder) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` -> OpenCLIP's text-tower names (SDXL's ``conditioner.embedders.1
    .model.``): q, k, v fused into ``in_proj``, the projection stored transposed (hidden, projection)."""
    state = {k.removeprefix("text_model."): v for k, v in encoder.state_dict().items()}
    out = {"positional_embedding": state.pop("embeddings.position_embedding.weight"),
           "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
           "ln_final.weight": state.pop("final_layer_norm.weight"), "ln_final.bias": state.pop("final_layer_norm.bias"),
           "text_projection": state.pop("text_projection.weight").T}
    state.pop("embeddings.position_ids", None)
    names = [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
             ("self_attn.out_proj", "attn.out_proj")]
    for i in range(encoder.config.num_hidden_layers):
        hf, ldm = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [state.pop(f"{hf}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"{ldm}attn.in_proj_{kind}"] = torch.cat(qkv)   # (3 D, D) / (3 D,)
            for a, b in names:
                out[f"{ldm}{b}.{kind}"] = state.pop(f"{hf}{a}.{kind}")
    if state:
        raise ValueError(f"unconverted text-encoder tensors: {sorted(state)[:3]}")
    return out


def save_sgm_checkpoint(parts: dict, path: Path) -> Path:
    """SDXL ``parts`` (unet, vae, text_encoder, text_encoder_2) -> one original-layout ``.safetensors``
    file at ``path``, as Stability's ``sd_xl_base_1.0.safetensors`` names its tensors."""
    state = {**unet_to_ldm(parts["unet"]), **vae_to_ldm(parts["vae"])}
    for k, v in parts["text_encoder"].state_dict().items():
        state["conditioner.embedders.0.transformer.text_model." + k.removeprefix("text_model.")] = v
    for k, v in _clip_to_openclip(parts["text_encoder_2"]).items():
        state["conditioner.embedders.1.model." + k] = v
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return Path(path)
