"""tiny-pix2pix: an InstructPix2Pix model at diffusers' test sizes; built in, from a local directory,
and by hub id (timbrooks/instruct-pix2pix's layout, through the hub download)."""

import json

import torch

import videdit.models.loading
from videdit.models import load_model
from videdit.models.tiny import PIX2PIX_UNET_CONFIG, build_tiny_pix2pix, save_tiny_pix2pix


def test_sizes_family_and_the_same_weights_every_build():
    a, b = build_tiny_pix2pix(), build_tiny_pix2pix()
    for part in ("unet", "vae", "text_encoder"):
        for (n, p), (_, q) in zip(a[part].named_parameters(), b[part].named_parameters()):
            assert torch.equal(p, q), (part, n)
    assert a["unet"].config.in_channels == 8 and a["unet"].config.out_channels == 4
    assert tuple(a["unet"].config.block_out_channels) == PIX2PIX_UNET_CONFIG["block_out_channels"] == (32, 64)
    assert a["scheduler_config"]["_class_name"] == "EulerAncestralDiscreteScheduler"
    model = load_model("tiny-pix2pix")
    # the UNet takes 8 channels; the latents the VAE makes and the sampler moves have 4
    assert (model.family, model.latent_channels, model.vae_scale_factor, model.native_size) == \
        ("InstructPix2Pix", 4, 2, 64)
    assert model.encode_images(torch.zeros(1, 32, 32, 3, dtype=torch.uint8).numpy()).shape == (1, 4, 16, 16)


def _unet_out(model):
    x, t, e = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([10]), \
        model.encode_text(["make it snowy"])
    return model.unet(x, t, encoder_hidden_states=e).sample


def test_local_directory_and_hub_id_load_like_the_builtin(tmp_path, monkeypatch):
    path = save_tiny_pix2pix(tmp_path / "ip2p")
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    builtin = load_model("tiny-pix2pix")
    local = load_model(path)
    assert local.family == "InstructPix2Pix" and local.scheduler_config["_class_name"] == \
        "EulerAncestralDiscreteScheduler"
    for part in ("unet", "vae", "text_encoder"):   # bit-identical weights; outputs within float rounding
        theirs = dict(getattr(builtin, part).named_parameters())
        assert all(torch.equal(p, theirs[n]) for n, p in getattr(local, part).named_parameters()), part
    torch.testing.assert_close(_unet_out(local), _unet_out(builtin))
    fetched = []

    def download(repo_id):   # the hub is unreachable here: its snapshot is the saved directory
        fetched.append(repo_id)
        return path

    monkeypatch.setattr(videdit.models.loading, "_download", download)
    hub = load_model("timbrooks/instruct-pix2pix")
    assert fetched == ["timbrooks/instruct-pix2pix"] and hub.family == "InstructPix2Pix"
    assert hub.name == "timbrooks/instruct-pix2pix" and hub.fingerprint == local.fingerprint
