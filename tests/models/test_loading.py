import copy
import json

import numpy as np
import pytest
import torch

from tests.test_cli import SAMPLE
from videdit.errors import VideditError
from videdit.models import load_model, loading, unet_dtype
from videdit.models.tiny import save_tiny_random


def test_tiny_random_is_the_same_every_time(tiny):
    again = load_model("tiny-random")
    for a, b in zip(tiny.unet.parameters(), again.unet.parameters()):
        assert torch.equal(a, b)
    assert tiny.vae_scale_factor == 8 and tiny.latent_channels == 4
    n = sum(p.numel() for part in (tiny.unet, tiny.vae, tiny.text_encoder) for p in part.parameters())
    assert 1_000_000 < n < 5_000_000


def test_text_per_prompt_and_vae_in_batches(tiny):
    emb = tiny.encode_text(["a", "b", "c", "a"])
    assert emb.shape == (4, 77, 32)
    assert torch.equal(emb[0], emb[3]) and (emb[0] - emb[1]).abs().max() > 0.1
    tiny._text_cache.clear()
    assert torch.equal(emb[2:3], tiny.encode_text(["c"]))   # encoded afresh, alone: the same bits
    frames = np.random.default_rng(0).integers(0, 255, (5, 48, 40, 3), dtype=np.uint8)
    z = tiny.encode_images(frames, batch_size=2)
    assert z.shape == (5, 4, 6, 5)
    torch.testing.assert_close(z[4:], tiny.encode_images(frames[4:]))
    out = tiny.decode_latents(z, batch_size=3)
    assert out.shape == (5, 48, 40, 3) and out.dtype == np.uint8


def test_latents_are_contiguous_and_their_frames_do_not_depend_on_the_layout(tiny):
    """The pixels' permuted view leaves the encoder's output channels-last; the latents come out contiguous,
    and decoding the same latents laid out channels-last gives the same frames to the bit (the decoder rounds
    differently on the two layouts: this test fails without the contiguous copy)."""
    frames = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    z = tiny.encode_images(frames)
    assert z.is_contiguous()
    np.testing.assert_array_equal(tiny.decode_latents(z.to(memory_format=torch.channels_last)),
                                  tiny.decode_latents(z))


def test_text_cache_keeps_the_recently_used_prompts(tiny, monkeypatch):
    monkeypatch.setattr(loading, "TEXT_CACHE_SIZE", 2)
    tiny._text_cache.clear()
    first = tiny.encode_text(["a", "b", "c"])
    assert list(tiny._text_cache) == ["b", "c"]
    assert torch.equal(tiny.encode_text(["a"])[0], first[0])  # encoded again, the same bits
    tiny.encode_text(["c"])
    tiny.encode_text(["d"])
    assert list(tiny._text_cache) == ["c", "d"]


def test_text_cache_follows_the_encoder_and_dtype():
    model = load_model("tiny-random", device="cpu")
    before = model.encode_text(["a"])
    with torch.no_grad():
        dict(model.text_encoder.named_parameters())["final_layer_norm.bias"].add_(1.0)   # same module: cached
    assert torch.equal(model.encode_text(["a"]), before)
    model.text_encoder = copy.deepcopy(model.text_encoder)                # another module: encoded afresh
    assert (model.encode_text(["a"]) - before).abs().min() > 0.5
    model.dtype = torch.bfloat16
    assert model.encode_text(["a"]).dtype == torch.bfloat16


def test_local_directory_loads_like_the_builtin(tiny, tmp_path):
    save_tiny_random(tmp_path / "m")
    model = load_model(tmp_path / "m")
    x, t, e = torch.randn(1, 4, 8, 8), torch.tensor([10]), tiny.encode_text(["a"])
    torch.testing.assert_close(model.unet(x, t, encoder_hidden_states=e).sample,
                               tiny.unet(x, t, encoder_hidden_states=e).sample)
    assert model.tokens("ab") == tiny.tokens("ab") == ["<|startoftext|>", "a", "b</w>", "<|endoftext|>"]
    assert len(model.fingerprint) == 16


def test_v_prediction_directory(tmp_path):
    path = save_tiny_random(tmp_path / "v")
    cfg_path = path / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["prediction_type"] = "v_prediction"
    cfg_path.write_text(json.dumps(cfg))
    assert load_model(path).prediction_type == "v_prediction"


def test_errors_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VideditError, match="not in the Hugging Face cache.*--model toy.*local diffusers directory"):
        load_model("nobody/no-such-model")
    with pytest.raises(VideditError, match="no model at"):
        load_model("./missing-dir")
    (tmp_path / "x").mkdir()
    with pytest.raises(VideditError, match="not a diffusers model directory"):
        load_model(tmp_path / "x")
    (tmp_path / "x" / "model_index.json").write_text('{"text_encoder_2": ["transformers", "CLIPTextModel"]}')
    with pytest.raises(VideditError, match="SDXL"):
        load_model(tmp_path / "x")
    with pytest.raises(VideditError, match="unknown dtype"):
        load_model("tiny-random", dtype="fp8")


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_low_precision_runs(tiny, dtype):
    m = load_model("tiny-random", dtype=dtype)
    frames = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    z, z32 = m.encode_images(frames), tiny.encode_images(frames)
    assert z.dtype == m.dtype and z.shape == z32.shape and torch.isfinite(z).all()
    # The same weights rounded to the dtype: the latents are the fp32 ones up to its rounding.
    # Measured 1.38 eps (fp16, eps 9.8e-4) and 1.11 eps (bf16, eps 7.8e-3) relative; bound about
    # 2x. A latent scale off by 1% is 10 eps in fp16; weights from another init are off by O(1).
    eps = torch.finfo(m.dtype).eps
    err = float((z.float().cpu() - z32).norm() / z32.norm())
    assert err <= 3 * eps, f"{dtype}: {err:.3e} ({err / eps:.2f} eps)"


def test_unet_dtype_restores_on_error():
    model = load_model("tiny-random", dtype="bf16")
    with pytest.raises(RuntimeError, match="boom"):
        with unet_dtype(model.unet, torch.float32):
            assert model.unet.dtype == torch.float32
            raise RuntimeError("boom")
    assert model.unet.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.unet.parameters())


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """huggingface_hub offline (as HF_HUB_OFFLINE=1 makes it) with an empty cache in tmp_path."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_default_model_is_sd15_from_the_hub_cache(offline_hub):
    """Without a spec, Stable Diffusion 1.5 from the hub: offline and not cached, one line naming
    the offline alternatives; once in the cache (here tiny-random saved as its snapshot), loaded
    from there without the network."""
    from videdit.models import DEFAULT_MODEL

    assert DEFAULT_MODEL == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    with pytest.raises(VideditError) as e:
        load_model()
    assert str(e.value) == (
        "'stable-diffusion-v1-5/stable-diffusion-v1-5' is not in the Hugging Face cache and cannot be downloaded "
        "(HF_HUB_OFFLINE is set); connect once to download it, or use --model toy (shipped with videdit, works "
        "offline) or a local diffusers directory (--model /path/to/stable-diffusion-v1-5)")
    repo = offline_hub / "models--stable-diffusion-v1-5--stable-diffusion-v1-5"
    save_tiny_random(repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert loading.peek_geometry(DEFAULT_MODEL).native_size == 512   # the configs alone, from the cache
    model = load_model()
    assert model.name == DEFAULT_MODEL and model.native_size == 512 and model.unet.config.in_channels == 4


def test_cli_without_model_offline_says_what_to_use(offline_hub, tmp_path, capsys):
    from videdit.cli import main

    code = main(["edit", str(SAMPLE), "-t", "x", "-o", str(tmp_path / "o.mp4"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "o.mp4").exists()
    assert err.startswith("videdit: error: 'stable-diffusion-v1-5/stable-diffusion-v1-5' is not in the Hugging Face "
                          "cache") and "--model toy (shipped with videdit, works offline)" in err
