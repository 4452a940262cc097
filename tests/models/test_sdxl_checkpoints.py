"""SDXL checkpoints as people have them, written by the tests from tiny-sdxl: one original-layout
(SGM) single file and textual-inversion embeddings with clip_l and clip_g vectors."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from videdit.errors import VideditError
from videdit.models import load_model
from videdit.models.tiny import build_tiny_sdxl, save_tiny_sdxl
from videdit.pipeline import EditSettings, edit_latents, invert_frames

from .ldm_layout import save_sgm_checkpoint

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    return save_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")


@pytest.fixture(scope="module")
def sdxl_file(tmp_path_factory):
    return save_sgm_checkpoint(build_tiny_sdxl(), tmp_path_factory.mktemp("sgm") / "tiny-sdxl.safetensors")


@pytest.fixture(scope="module")
def from_file(sdxl_dir, sdxl_file):
    return load_model(sdxl_file, device="cpu", config=sdxl_dir)


def _max_difference(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def test_single_file_sdxl_loads_tiny_sdxl_exactly(tiny_sdxl, sdxl_dir, sdxl_file, from_file, tmp_path):
    """Every part's weights equal tiny-sdxl's (max abs difference 0; the second text encoder too,
    which diffusers' pipeline loader fills with the first one's where both are as wide); the
    tokenizers, scheduler and empty-negative rule are the config directory's."""
    model = from_file
    assert model.family == "SDXL" and model.zero_empty_negative and model.native_size == 64
    assert [_max_difference(getattr(model, p), getattr(tiny_sdxl, p)) for p in PARTS] == [0.0] * 4
    assert model.scheduler_config["_class_name"] == "EulerDiscreteScheduler" and model.scaling_factor == 4.7
    assert model.scheduler_config["timestep_spacing"] == "leading" and model.scheduler_config["steps_offset"] == 1
    assert model.tokenizer_2.get_vocab() == tiny_sdxl.tokenizer_2.get_vocab()
    assert model.fingerprint != load_model(sdxl_dir, device="cpu").fingerprint
    torch.save({"state_dict": load_file(str(sdxl_file))}, tmp_path / "tiny-sdxl.ckpt")   # the pickled layout
    ckpt = load_model(tmp_path / "tiny-sdxl.ckpt", device="cpu", config=sdxl_dir)
    assert _max_difference(ckpt.text_encoder_2, tiny_sdxl.text_encoder_2) == 0.0


def test_single_file_sdxl_edits_as_tiny_sdxl(tiny_sdxl, from_file, wolf_frames):
    """One edit (DDIM inversion, then the plain edit) from the single file gives tiny-sdxl's latents
    bit for bit. (tiny-sdxl's saved directory gives them to 5e-5: from_pretrained memory-maps its
    weights at addresses the matrix kernels round differently for, 2.4e-7 in the pooled text.)"""
    s = EditSettings(source_prompt="a wolf", target_prompt="a robot wolf", steps=2)
    frames = wolf_frames[:1, ::2, ::2]                                # 32x32 pixels: 16x16 latents
    edits = [edit_latents(m, invert_frames(m, frames, s), s) for m in (from_file, tiny_sdxl)]
    assert edits[0].shape == (1, 4, 16, 16) and torch.equal(edits[0], edits[1])


def test_single_file_sdxl_refusals_are_one_line(sdxl_dir, sdxl_file, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from videdit.models.tiny import save_tiny_random

    sd_dir = save_tiny_random(tmp_path / "sd")
    state = load_file(str(sdxl_file))
    refiner = tmp_path / "refiner.safetensors"
    save_file({"model.diffusion_model.out.2.weight": torch.ones(1),
               "conditioner.embedders.0.model.text_projection": torch.ones(1)}, str(refiner))
    del state["conditioner.embedders.1.model.ln_final.bias"]
    save_file(state, str(tmp_path / "cut.safetensors"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for spec, config, message in [
            (refiner, None, "is an SDXL refiner checkpoint"),
            (sdxl_file, sd_dir, "is not a diffusers SDXL directory \\(no text_encoder_2/\\); pass --model-config"),
            (sdxl_file, tmp_path / "x.yaml", "not the original YAML"),
            (tmp_path / "cut.safetensors", sdxl_dir, "its text_encoder_2 does not fit the config .*Missing key"),
            (sdxl_file, None, "'stabilityai/stable-diffusion-xl-base-1.0' is not in the Hugging Face cache .*"
                              "or pass --model-config DIR \\(a diffusers SDXL directory")]:
        with pytest.raises(VideditError, match=message) as e:
            load_model(spec, config=config)
        assert "\n" not in str(e.value)


def test_single_file_sdxl_config_is_inferred_from_the_hub_cache(tiny_sdxl, sdxl_dir, sdxl_file, tmp_path,
                                                                monkeypatch):
    """Without --model-config, SDXL base's repo (diffusers' inference for an SDXL checkpoint), its
    configs read offline from the Hugging Face cache (here tiny-sdxl's directory as its snapshot)."""
    import shutil

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--stabilityai--stable-diffusion-xl-base-1.0"
    shutil.copytree(sdxl_dir, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    model = load_model(sdxl_file, device="cpu")
    assert _max_difference(model.unet, tiny_sdxl.unet) == 0.0 and model.tokenizer_2 is not None


def _sdxl_embedding(path, n=1, widths=(32, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    vectors = {"clip_l": torch.randn(n, widths[0], generator=g), "clip_g": torch.randn(n, widths[1], generator=g)}
    save_file(vectors, str(path))
    return vectors


@pytest.mark.parametrize("n", [1, 2])
def test_sdxl_embedding_goes_to_both_encoders(tiny_sdxl, tmp_path, n):
    """The file's name is the token, added to both tokenizers; its clip_l rows are the first
    encoder's and its clip_g rows the second's; a prompt with it encodes differently."""
    vectors = _sdxl_embedding(tmp_path / "wolfy.safetensors", n=n)
    model = load_model("tiny-sdxl", device="cpu", embeddings=[tmp_path / "wolfy.safetensors"])
    words = ["wolfy"] + [f"wolfy_{i}" for i in range(1, n)]
    for tokenizer, encoder, key in ((model.tokenizer, model.text_encoder, "clip_l"),
                                    (model.tokenizer_2, model.text_encoder_2, "clip_g")):
        ids = tokenizer.convert_tokens_to_ids(words)
        assert len(tokenizer) == len(tiny_sdxl.tokenizer) + n and min(ids) >= len(tiny_sdxl.tokenizer)
        assert torch.equal(encoder.get_input_embeddings().weight[ids], vectors[key])
        assert tokenizer(model._expand("a wolfy")).input_ids[2:2 + n] == ids
    assert model.tokens("a wolfy")[2:2 + n] == words
    with_token, without = model.encode_text(["a wolfy"]), model.encode_text(["a wolf"])
    assert float((with_token[0, :77, :32] - without[0, :77, :32]).abs().max()) > 1e-3    # the first encoder's
    assert float((with_token[0, :77, 32:] - without[0, :77, 32:]).abs().max()) > 1e-3    # the second's
    assert float((with_token[0, 77] - without[0, 77]).abs().max()) > 1e-3               # the pooled row
    assert torch.equal(model.encode_text(["a wolf"]), tiny_sdxl.encode_text(["a wolf"]))
    assert "wolfy" not in tiny_sdxl.tokenizer.get_vocab() and model.fingerprint != tiny_sdxl.fingerprint


def test_embedding_for_the_wrong_architecture_is_one_line(tmp_path):
    torch.save({"<cat-toy>": torch.randn(32)}, tmp_path / "sd1.bin")          # SD 1.x's layout, tiny's width
    _sdxl_embedding(tmp_path / "wide.safetensors", widths=(768, 1280))        # SDXL base's widths
    _sdxl_embedding(tmp_path / "xl.safetensors")
    save_file({"clip_l": torch.ones(2, 32), "clip_g": torch.ones(1, 32)}, str(tmp_path / "broken.safetensors"))
    for model, path, message in [
            ("tiny-sdxl", "sd1.bin", "is an embedding for one text encoder \\(32 values per vector, SD 1.x/2.x's "
                                     "layout\\), and an SDXL model has two; give an SDXL"),
            ("tiny-sdxl", "wide.safetensors", "is an embedding for another text encoder: its clip_l vectors have "
                                              "768 values, this model's 32"),
            ("tiny-sdxl", "broken.safetensors", "2 clip_l vectors and 1 clip_g ones"),
            ("tiny-random", "xl.safetensors", "is an SDXL embedding \\(clip_l and clip_g vectors")]:
        with pytest.raises(VideditError, match=message) as e:
            load_model(model, embeddings=[tmp_path / path])
        assert "\n" not in str(e.value)
