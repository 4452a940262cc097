"""Checkpoints as people have them, all written by the tests: an original-layout single file,
LoRAs (kohya and diffusers layouts), textual-inversion embeddings and a replacement VAE."""

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from videdit.cli import main
from videdit.errors import VideditError
from videdit.models import load_model
from videdit.models.checkpoints import Lora
from videdit.models.tiny import build_tiny_random, save_tiny_random

from .ldm_layout import save_ldm_checkpoint, vae_to_ldm

ATTN1_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"   # (32, 32) in tiny-random
TE_Q = "encoder.layers.0.self_attn.q_proj"                             # (32, 32)


def _same_model(a, b):
    """Bit-identical weights, and UNet outputs equal to float rounding: the session's tiny-random may
    run its attention through another processor than a fresh load (measured 3e-7 apart)."""
    for one, other in ((a.unet, b.unet), (a.text_encoder, b.text_encoder)):
        sa, sb = one.state_dict(), other.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    torch.testing.assert_close(_unet_out(a), _unet_out(b), rtol=0, atol=1e-6)


def _unet_out(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g)
    cond = model.encode_text(["a photo of a cat"])
    with torch.no_grad():
        return model.unet(x, 500, encoder_hidden_states=cond).sample


def _kohya_lora(path, rank=2, alpha=1.0, out=32, inp=32, seed=0):
    """A kohya-layout LoRA on one UNet and one text-encoder layer; returns {layer: (up, down)}."""
    g = torch.Generator().manual_seed(seed)
    layers = {}
    state = {}
    for prefix, name in (("lora_unet_", ATTN1_Q), ("lora_te_", "text_model." + TE_Q)):
        key = prefix + name.replace(".", "_")
        down, up = torch.randn(rank, inp, generator=g), torch.randn(out, rank, generator=g)
        state |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(alpha)}
        layers[name] = (up, down)
    save_file(state, str(path))
    return layers


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return save_tiny_random(tmp_path_factory.mktemp("sd") / "tiny")


def test_single_file_loads_like_the_directory(tiny, sd_dir, tmp_path):
    ckpt = save_ldm_checkpoint(build_tiny_random(), tmp_path / "tiny.safetensors")
    model = load_model(ckpt, device="cpu", config=sd_dir)
    _same_model(model, tiny)
    for a, b in zip(model.vae.state_dict().values(), tiny.vae.state_dict().values()):
        assert torch.equal(a, b)
    assert model.scheduler_config["beta_schedule"] == "scaled_linear" and model.scaling_factor == 4.7
    assert model.fingerprint != load_model(sd_dir, device="cpu").fingerprint
    torch.save({"state_dict": load_file(str(ckpt))}, tmp_path / "tiny.ckpt")   # the pickled .ckpt layout
    _same_model(load_model(tmp_path / "tiny.ckpt", device="cpu", config=sd_dir), tiny)
    with pytest.raises(VideditError, match="--model-config describes a single-file checkpoint"):
        load_model(sd_dir, config=sd_dir)


@pytest.mark.parametrize("prefix, part", [("model.diffusion_model.input_blocks.1", "unet"),
                                          ("cond_stage_model.transformer.text_model.encoder.layers.0", "text_encoder")])
def test_a_checkpoint_missing_a_tensor_is_one_line(sd_dir, tmp_path, prefix, part):
    """diffusers' single-file loading without accelerate keeps a missing tensor random without a word."""
    state = load_file(str(save_ldm_checkpoint(build_tiny_random(), tmp_path / "full.safetensors")))
    del state[next(k for k in state if k.startswith(prefix) and k.endswith("weight"))]
    save_file(state, str(tmp_path / "cut.safetensors"))
    with pytest.raises(VideditError, match=f"is an incomplete checkpoint: its {part} lacks 1 tensor") as e:
        load_model(tmp_path / "cut.safetensors", device="cpu", config=sd_dir)
    assert "\n" not in str(e.value)


def test_not_a_checkpoint_is_one_line(tmp_path):
    junk = tmp_path / "model.safetensors"
    junk.write_text("not weights\n")
    lora = tmp_path / "lora.safetensors"
    _kohya_lora(lora)
    notes = tmp_path / "notes.txt"
    notes.write_text("hi")
    for spec, message in [(junk, "is not a model checkpoint"), (lora, "is a LoRA \\(use --lora\\)"),
                          (notes, "is not a model: --model takes"), (tmp_path / "gone.ckpt", "no checkpoint file")]:
        with pytest.raises(VideditError, match=message) as e:
            load_model(spec)
        assert "\n" not in str(e.value)


def test_lora_at_scale_zero_is_no_lora_and_at_one_is_the_fused_update(tiny, tmp_path):
    layers = _kohya_lora(tmp_path / "l.safetensors", rank=2, alpha=1.0)
    zero = load_model("tiny-random", device="cpu", lora=[f"{tmp_path / 'l.safetensors'}=0"])
    one = load_model("tiny-random", device="cpu", lora=[tmp_path / "l.safetensors"])
    _same_model(zero, tiny)
    assert (_unet_out(one) - _unet_out(tiny)).abs().max() > 1e-3
    up, down = layers[ATTN1_Q]
    fused = one.unet.get_submodule(ATTN1_Q).weight - tiny.unet.get_submodule(ATTN1_Q).weight
    torch.testing.assert_close(fused, up @ down * (1.0 / 2))   # scale * alpha / rank
    up, down = layers["text_model." + TE_Q]
    fused = one.text_encoder.get_submodule(TE_Q).weight - tiny.text_encoder.get_submodule(TE_Q).weight
    torch.testing.assert_close(fused, up @ down * (1.0 / 2))
    fps = {tiny.fingerprint, zero.fingerprint, one.fingerprint}
    assert len(fps) == 3   # the cache keys follow the LoRA and its scale


def test_several_loras_and_the_diffusers_layout(tiny, tmp_path):
    layers = _kohya_lora(tmp_path / "k.safetensors", rank=2, alpha=2.0)   # alpha = rank: scale 1
    up, down = layers[ATTN1_Q]
    te_up, te_down = layers["text_model." + TE_Q]
    save_file({f"unet.{ATTN1_Q}.lora_A.weight": down, f"unet.{ATTN1_Q}.lora_B.weight": up,
               f"text_encoder.text_model.{TE_Q}.lora_A.weight": te_down,
               f"text_encoder.text_model.{TE_Q}.lora_B.weight": te_up}, str(tmp_path / "d.safetensors"))
    kohya = load_model("tiny-random", device="cpu", lora=[tmp_path / "k.safetensors"])
    both = load_model("tiny-random", device="cpu", lora=[(tmp_path / "k.safetensors", 0.5),
                                                         f"{tmp_path / 'd.safetensors'}=0.5"])
    for a, b in zip(kohya.unet.parameters(), both.unet.parameters()):
        torch.testing.assert_close(a, b)
    procs = ATTN1_Q.replace(".to_q", ".processor.to_q_lora")   # diffusers' older attention-processor layout
    save_file({f"{procs}.down.weight": down, f"{procs}.up.weight": up}, str(tmp_path / "p.safetensors"))
    unet_only = load_model("tiny-random", device="cpu", lora=[tmp_path / "p.safetensors"])
    assert torch.equal(unet_only.unet.get_submodule(ATTN1_Q).weight, kohya.unet.get_submodule(ATTN1_Q).weight)
    assert Lora.parse("a=b.safetensors=0.25") == Lora(Lora.parse("a=b.safetensors").path, 0.25)
    with pytest.raises(VideditError, match="must be a number"):
        Lora.parse("x.safetensors=big")


def test_lora_for_another_architecture_is_one_line_and_changes_nothing(tmp_path):
    _kohya_lora(tmp_path / "wide.safetensors", out=320, inp=320)    # SD 1.5's shapes on tiny-random's names
    q = "lora_unet_" + ATTN1_Q.replace(".", "_")
    save_file({f"{q}.lora_down.weight": torch.ones(1, 32), f"{q}.lora_up.weight": torch.ones(32, 1),
               "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight": torch.ones(1, 32),
               "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight": torch.ones(32, 1)},
              str(tmp_path / "other.safetensors"))
    save_file({"model.diffusion_model.out.2.weight": torch.ones(2)}, str(tmp_path / "ckpt.safetensors"))
    for name, message in [("wide", "is a LoRA for another architecture: its .* layer .* is \\(320, 320\\), "
                           "the model's \\(32, 32\\)"),
                          ("other", "is a LoRA for another architecture: this model has no unet layer "
                           "'down_blocks_7_attentions_0_proj_in'"),
                          ("ckpt", "is not a LoRA file videdit reads")]:
        with pytest.raises(VideditError, match=message) as e:
            load_model("tiny-random", lora=[tmp_path / f"{name}.safetensors"])
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("layout", ["diffusers", "a1111"])
def test_embedding_adds_its_token_and_encodes_to_the_stored_vectors(tiny, tmp_path, layout):
    vectors = torch.randn(1 if layout == "diffusers" else 2, 32)
    if layout == "diffusers":
        path = tmp_path / "cat.bin"
        torch.save({"<cat-toy>": vectors[0]}, path)
        words = ["<cat-toy>"]
    else:
        path = tmp_path / "cat.pt"
        torch.save({"string_to_param": {"*": vectors}, "name": "<cat-toy>"}, path)
        words = ["<cat-toy>", "<cat-toy>_1"]
    model = load_model("tiny-random", device="cpu", embeddings=[path])
    assert model.tokens("a <cat-toy> toy") == ["<|startoftext|>", "a</w>", *words, "t", "o", "y</w>", "<|endoftext|>"]
    ids = model.tokenizer(model._expand("a <cat-toy>"), return_tensors="pt").input_ids
    torch.testing.assert_close(model.text_encoder.get_input_embeddings()(ids)[0, 2:2 + len(words)], vectors)
    assert (model.encode_text(["a <cat-toy>"]) - model.encode_text(["a cat"])).abs().max() > 1e-3
    assert "<cat-toy>" not in tiny.tokenizer.get_vocab() and model.fingerprint != tiny.fingerprint
    torch.save({"emb": torch.ones(3, 16), "other": torch.ones(2)}, tmp_path / "bad.pt")
    with pytest.raises(VideditError, match="is not a textual-inversion embedding"):
        load_model("tiny-random", embeddings=[tmp_path / "bad.pt"])


def test_vae_from_a_directory_or_a_single_file(tiny, tmp_path):
    other = copy.deepcopy(tiny.vae)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01)
    other.save_pretrained(tmp_path / "vae")
    save_file({k: v.contiguous() for k, v in vae_to_ldm(other).items()}, str(tmp_path / "vae.safetensors"))
    z = torch.randn(1, 4, 4, 4)
    want = other.decode(z / tiny.scaling_factor).sample
    for spec in (tmp_path / "vae", tmp_path / "vae.safetensors"):
        model = load_model("tiny-random", device="cpu", vae=spec)
        torch.testing.assert_close(model.vae.decode(z / tiny.scaling_factor).sample, want)
        assert model.fingerprint != tiny.fingerprint
    save_file({"encoder.conv_in.weight": torch.ones(3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(VideditError, match="is not a VAE for this model"):
        load_model("tiny-random", vae=tmp_path / "bad.safetensors")


def test_cli_lora_keys_the_inversion_cache_and_a_bad_one_is_one_line(tmp_path, shared_data, capsys):
    lora = tmp_path / "l.safetensors"
    _kohya_lora(lora)
    (tmp_path / "junk.safetensors").write_text("junk")
    clip = shared_data / "videos" / "dog.mp4"
    common = ["-s", "a dog", "--model", "tiny-random", "--steps", "2", "--max-frames", "1", "--size", "64",
              "--device", "cpu", "-q", "--cache-dir", str(tmp_path / "c")]
    assert main(["invert", str(clip), *common, "--lora", f"{lora}=0.5"]) == 0
    runs = {}
    for name, extra in [("plain", []), ("other scale", ["--lora", f"{lora}=1"]), ("same", ["--lora", f"{lora}=0.5"])]:
        out = ["-o", str(tmp_path / "e.mp4"), "--overwrite"]
        assert main(["edit", str(clip), *common, "-t", "a cat", *out, *extra]) == 0
        runs[name] = capsys.readouterr().out
    assert "0/1 windows from cache" in runs["plain"] and "0/1 windows from cache" in runs["other scale"]
    assert "1/1 windows from cache" in runs["same"]
    for command in (["edit", str(clip), "-t", "a cat", "-o", str(tmp_path / "o.mp4")], ["invert", str(clip)]):
        code = main([*command, *common, "--lora", str(tmp_path / "junk.safetensors")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "is not a LoRA file" in err
