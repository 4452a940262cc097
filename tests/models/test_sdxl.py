"""SDXL models: the built-in tiny-sdxl, a saved StableDiffusionXLPipeline directory, a hub id, and
their text encoding against diffusers' ``StableDiffusionXLPipeline.encode_prompt``."""

import copy
import json
import shutil
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch

from tests.peers import stable_diffusion_xl
from videdit.models import load_model
from videdit.models.tiny import SDXL_UNET_CONFIG, build_tiny_sdxl, save_tiny_sdxl


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    return save_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")


def test_tiny_sdxl_sizes_and_family(tiny_sdxl):
    again = build_tiny_sdxl()
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        for (n, p), (_, q) in zip(getattr(tiny_sdxl, part).named_parameters(), again[part].named_parameters()):
            assert torch.equal(p, q), (part, n)
    assert tiny_sdxl.family == "SDXL" and tiny_sdxl.native_size == 32 * 2 == 64 and tiny_sdxl.vae_scale_factor == 2
    assert tuple(tiny_sdxl.unet.config.block_out_channels) == SDXL_UNET_CONFIG["block_out_channels"] == (32, 64)
    assert tiny_sdxl.unet.config.cross_attention_dim == 64 and tiny_sdxl.text_encoder_2.config.projection_dim == 32
    assert tiny_sdxl.scheduler_config["timestep_spacing"] == "leading" and tiny_sdxl.zero_empty_negative
    n = sum(p.numel() for part in (tiny_sdxl.unet, tiny_sdxl.vae, tiny_sdxl.text_encoder, tiny_sdxl.text_encoder_2)
            for p in part.parameters())
    assert 1_000_000 < n < 5_000_000


def test_text_is_diffusers_encode_prompt_packed(tiny_sdxl):
    """Both encoders' penultimate hidden states side by side (77, 32 + 32) and text_encoder_2's
    projected embedding (32) as the last row: ``encode_prompt``'s (up to float rounding: it encodes
    the prompts in one batch, videdit one at a time)."""
    text = tiny_sdxl.encode_text(["a cat", "a dog"])                           # (2, 78, 64)
    assert text.shape == (2, 78, 64)
    with torch.no_grad():
        hidden, _, pooled, _ = stable_diffusion_xl(tiny_sdxl).encode_prompt(
            ["a cat", "a dog"], device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(text[:, :77], hidden)
    torch.testing.assert_close(text[:, 77, :32], pooled)
    assert float(text[:, 77, 32:].abs().max()) == 0.0


def test_text_cache_follows_the_second_encoder(sdxl_dir):
    model = load_model(sdxl_dir)
    before = model.encode_text(["a"])
    model.text_encoder_2 = copy.deepcopy(model.text_encoder_2)
    with torch.no_grad():
        dict(model.text_encoder_2.named_parameters())["text_projection.weight"].mul_(2.0)
    after = model.encode_text(["a"])
    torch.testing.assert_close(after[:, -1, :32], 2 * before[:, -1, :32])    # encoded afresh: the pooled row doubles
    assert torch.equal(after[:, :-1], before[:, :-1])


def test_saved_directory_loads_like_the_builtin(tiny_sdxl, sdxl_dir):
    index = json.loads((sdxl_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and index["force_zeros_for_empty_prompt"] is True
    model = load_model(sdxl_dir)
    assert model.family == "SDXL" and model.zero_empty_negative and model.native_size == 64
    torch.testing.assert_close(model.encode_text(["a wolf"]), tiny_sdxl.encode_text(["a wolf"]))
    for a, b in zip(model.unet.parameters(), tiny_sdxl.unet.parameters()):
        assert torch.equal(a, b)
    assert model.scheduler_config["beta_schedule"] == "scaled_linear" and model.scheduler_config["steps_offset"] == 1


def test_force_zeros_for_empty_prompt_is_read_from_the_index(sdxl_dir, tmp_path):
    path = Path(shutil.copytree(sdxl_dir, tmp_path / "refined"))
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps({**index, "force_zeros_for_empty_prompt": False}))
    model = load_model(path)
    assert not model.zero_empty_negative
    assert torch.equal(model.encode_negative(""), model.encode_text([""]))


def test_hub_id_downloads_the_second_text_encoder(sdxl_dir, monkeypatch):
    """A hub id is fetched with ``_download``'s patterns (a stand-in hub here: the saved directory,
    copied through the same allow/ignore patterns): text_encoder_2's weights come along."""
    import huggingface_hub

    asked = {}

    def snapshot_download(repo_id, allow_patterns, ignore_patterns):
        asked["repo"] = repo_id
        out = sdxl_dir.parent / "snapshot"
        shutil.rmtree(out, ignore_errors=True)
        for f in sdxl_dir.rglob("*"):
            rel = f.relative_to(sdxl_dir).as_posix()
            if f.is_file() and any(fnmatch(rel, p) for p in allow_patterns) and \
                    not any(fnmatch(rel, p) for p in ignore_patterns):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, out / rel)
        return str(out)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model = load_model("someone/tiny-sdxl")
    assert asked["repo"] == "someone/tiny-sdxl" and model.family == "SDXL"
    assert (sdxl_dir.parent / "snapshot" / "text_encoder_2" / "model.safetensors").exists()


@pytest.mark.parametrize("dtype", ["fp16"])
def test_low_precision_places_both_encoders(tiny_sdxl, dtype):
    m = load_model("tiny-sdxl", dtype=dtype)
    assert m.text_encoder_2.dtype == m.text_encoder.dtype == m.unet.dtype == torch.float16
    text = m.encode_text(["a wolf"])
    assert text.dtype == torch.float16
    err = float((text.float() - tiny_sdxl.encode_text(["a wolf"])).norm() / tiny_sdxl.encode_text(["a wolf"]).norm())
    assert err <= 3 * torch.finfo(torch.float16).eps, err


def test_lora_reaches_the_second_text_encoder(tiny_sdxl, tmp_path):
    """An SDXL LoRA in kohya's layout (lora_te2_*) fuses into text_encoder_2: W += up @ down."""
    from safetensors.torch import save_file

    layer = "encoder.layers.0.self_attn.q_proj"                                # (32, 32)
    down, up = torch.randn(2, 32), torch.randn(32, 2)
    key = "lora_te2_text_model_" + layer.replace(".", "_")
    save_file({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(2.0)},
              str(tmp_path / "te2.safetensors"))
    model = load_model("tiny-sdxl", lora=[str(tmp_path / "te2.safetensors")])
    path = "text_model." + layer                                                 # CLIPTextModelWithProjection's
    fused = model.text_encoder_2.get_submodule(path).weight - tiny_sdxl.text_encoder_2.get_submodule(path).weight
    torch.testing.assert_close(fused, up @ down)
    assert model.fingerprint != tiny_sdxl.fingerprint


def test_fp16_keeps_an_upcast_vae_in_fp32(tiny_sdxl, wolf_frames):
    """SDXL base's VAE overflows in fp16 (force_upcast): it stays fp32, the latents are the model's dtype."""
    m = load_model("tiny-sdxl", dtype="fp16")
    assert m.vae.config.force_upcast and m.vae.dtype == torch.float32 and m.unet.dtype == torch.float16
    z = m.encode_images(wolf_frames)
    assert z.dtype == torch.float16 and m.decode_latents(z).shape == wolf_frames.shape
    ref = tiny_sdxl.encode_images(wolf_frames)
    err = float((z.float() - ref).norm() / ref.norm())
    assert err <= 0.5 * torch.finfo(torch.float16).eps, err   # the fp32 latents rounded once to fp16
