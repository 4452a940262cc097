"""ControlNets on every UNet call of the inversion and the edit: scale 0 is no ControlNet to the
last bit, scale 1 changes the edit, the exact inversions still reconstruct, one plain DDIM
sampling is diffusers' StableDiffusionControlNetPipeline, several ControlNets add up, and
ControlNets load from a local directory or are refused in one line."""


import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from tests.inversion.exact_runs import rel_error, settings_for
from tests.models.test_loading import offline_hub  # noqa: F401  (a fixture)
from tests.peers import latent_edit, stable_diffusion_controlnet
from videdit.control import Control, ControlSpec, pair_controls, parse_controlnet, tiny_controlnet
from videdit.errors import VideditError
from videdit.inversion import InversionCache
from videdit.models.tiny import UNET_CONFIG
from videdit.pipeline import EditSettings, edit_latents, invert_frames, reconstruct

SOURCE, TARGET = "a wolf", "a robot wolf"


def conditions(model, frames, *specs):
    """The window's ControlFrames for ``specs`` (ControlSpec fields as tuples)."""
    return Control([ControlSpec(*s) for s in specs], model).window(0, frames)


def edit(model, frames, settings, control=None):
    inv = invert_frames(model, frames, settings, control=control)
    return edit_latents(model, inv, settings, control=control)


def test_scale_zero_is_no_controlnet_and_scale_one_is_not(tiny, wolf_frames):
    """The inversion and the edit with a ControlNet at scale 0 give the edit without one, to the
    last bit; at scale 1 the edit moves (measured relative change 0.92 of the latents)."""
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3)
    plain = edit(tiny, wolf_frames, s)
    zero = edit(tiny, wolf_frames, s, conditions(tiny, wolf_frames, ("canny", "tiny-random", 0.0)))
    assert float((zero - plain).abs().max()) == 0
    one = edit(tiny, wolf_frames, s, conditions(tiny, wolf_frames, ("canny", "tiny-random", 1.0)))
    assert rel_error(one, plain) > 0.5, rel_error(one, plain)


@pytest.mark.parametrize("method", ["bdia", "ddpm", "direct", "edict"])
def test_exact_inversions_reconstruct_with_a_controlnet(tiny, wolf_frames, method):
    """Source prompt = target prompt gives the source back with a ControlNet on the inversion and
    the replay (fp32, guidance 7.5, 10 steps): relative error <= 1e-4, as without one (measured 0
    for all four); replayed without it, 0.70 (ddpm) to 3.5 (direct)."""
    s = settings_for(method, 7.5, 10)
    control = conditions(tiny, wolf_frames, ("softedge", "tiny-random", 1.0))
    inv = invert_frames(tiny, wolf_frames, s, control=control)
    err = rel_error(reconstruct(tiny, inv, s, control=control), inv.source)
    assert err <= 1e-4, err
    # the same inversion replayed without the ControlNet is far off: the condition is in the loop
    assert rel_error(reconstruct(tiny, inv, s), inv.source) > 1e-2


@pytest.mark.parametrize("end", [1.0, 0.5])
def test_plain_sampling_is_diffusers_controlnet_pipeline(tiny, wolf_frames, end):
    """The plain editor with a ControlNet after a controlled DDIM inversion is diffusers'
    ``StableDiffusionControlNetPipeline`` + ``DDIMScheduler`` (eta 0) from the inverted noise with
    the same condition image, also where the ControlNet acts on the first half of the steps only
    (``control_guidance_end``). One frame, 6 steps, guidance 7.5; relative difference <= 1e-5,
    measured 1.4e-6 and 1.5e-6 (the DDIM coefficients round differently, fp64 here and fp32 in
    diffusers); the ControlNet moves the edit by 0.75 and 0.73."""
    s = EditSettings(source_prompt=SOURCE, target_prompt="a fox", steps=6, guidance=7.5)
    frame = wolf_frames[:1]
    control = conditions(tiny, frame, ("canny", "tiny-random", 0.8, 0.0, end))
    inv = invert_frames(tiny, frame, s, control=control)
    z = edit_latents(tiny, inv, s, control=control)
    pipe = stable_diffusion_controlnet(tiny, control.nets[0].net)
    image = torch.from_numpy(control.images[0]).permute(0, 3, 1, 2).float() / 255   # (1, 3, H, W)
    with torch.no_grad():
        want = latent_edit(pipe, inv.noise, "a fox", 6, 7.5, image=image, controlnet_conditioning_scale=0.8,
                           control_guidance_end=end)
    assert rel_error(z, want) <= 1e-5, rel_error(z, want)
    plain = edit_latents(tiny, inv, s)
    assert rel_error(z, plain) > 0.3   # the ControlNet did act


def test_several_controlnets_add_their_scaled_residuals(tiny, wolf_frames):
    """Two ControlNets (here the same one twice) at 0.25 and 0.5 act as one at 0.75 (measured 0
    apart; 0.61 from the edit without)."""
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2)
    inv = invert_frames(tiny, wolf_frames, s)
    two = edit_latents(tiny, inv, s, control=conditions(tiny, wolf_frames, ("canny", "tiny-random", 0.25),
                                                         ("canny", "tiny-random", 0.5)))
    one = edit_latents(tiny, inv, s, control=conditions(tiny, wolf_frames, ("canny", "tiny-random", 0.75)))
    assert rel_error(two, one) <= 1e-5
    assert rel_error(one, edit_latents(tiny, inv, s)) > 0.3


def test_the_cache_key_holds_the_controlnets_and_conditions(tiny, wolf_frames, tmp_path):
    s = EditSettings(source_prompt=SOURCE, steps=2)
    cache = InversionCache(tmp_path)
    first = invert_frames(tiny, wolf_frames, s, cache=cache, control=conditions(tiny, wolf_frames,
                                                                                ("canny", "tiny-random")))
    again = invert_frames(tiny, wolf_frames, s, cache=cache, control=conditions(tiny, wolf_frames,
                                                                                ("canny", "tiny-random")))
    assert not first.cached and again.cached
    for other in [("canny", "tiny-random", 0.5), ("softedge", "tiny-random"), ("canny", "tiny-random", 1.0, 0.0, 0.5)]:
        assert not invert_frames(tiny, wolf_frames, s, cache=cache, control=conditions(tiny, wolf_frames, other)).cached
    assert not invert_frames(tiny, wolf_frames, s, cache=cache).cached
    assert len(list(tmp_path.glob("*.safetensors"))) == 5


def test_a_saved_controlnet_loads_from_its_directory(tiny, wolf_frames, tmp_path):
    tiny_controlnet(tiny.unet).save_pretrained(tmp_path / "cn")
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2)
    from_dir = conditions(tiny, wolf_frames, ("canny", str(tmp_path / "cn")))
    built = conditions(tiny, wolf_frames, ("canny", "tiny-random"))
    assert from_dir.nets[0].fingerprint != built.nets[0].fingerprint
    assert torch.equal(edit(tiny, wolf_frames, s, from_dir), edit(tiny, wolf_frames, s, built))
    with pytest.raises(VideditError, match="is not a diffusers ControlNet directory .no config.json."):
        Control([ControlSpec("canny", str(tmp_path))], tiny)
    with pytest.raises(VideditError, match="no ControlNet at 'no/such/dir'"):
        Control([ControlSpec("canny", "no/such/dir")], tiny)


def test_a_controlnet_for_another_architecture_is_one_line(tiny, tmp_path):
    other = UNet2DConditionModel(**{**UNET_CONFIG, "cross_attention_dim": 64})
    ControlNetModel.from_unet(other, conditioning_embedding_out_channels=(8, 8, 16, 16)).save_pretrained(tmp_path)
    with pytest.raises(VideditError) as e:
        Control([ControlSpec("canny", str(tmp_path))], tiny)
    assert str(e.value) == (f"ControlNet {str(tmp_path)!r} is for another architecture than 'tiny-random' (SD1): "
                            f"cross_attention_dim 64 (model: 32); use a ControlNet trained for the model's family")
    ControlNetModel.from_unet(tiny.unet, conditioning_embedding_out_channels=(8, 16)).save_pretrained(tmp_path)
    with pytest.raises(VideditError, match="shrinks its condition 2x and 'tiny-random' works at 8 pixels per latent"):
        Control([ControlSpec("canny", str(tmp_path))], tiny)


def test_pairs_and_scales():
    assert parse_controlnet("lllyasviel/sd-controlnet-canny=0.5") == ("lllyasviel/sd-controlnet-canny", 0.5)
    assert parse_controlnet("dir/with=sign") == ("dir/with=sign", 1.0)
    specs = pair_controls(["canny", "softedge"], ["a/b", "c/d=0.3"])
    assert [(str(s.condition), s.controlnet, s.scale) for s in specs] == [("canny", "a/b", 1.0),
                                                                          ("softedge", "c/d", 0.3)]
    with pytest.raises(VideditError, match="^1 --control and 2 --controlnet given; the k-th --control pairs"):
        pair_controls(["canny"], ["a/b", "c/d"])
    with pytest.raises(VideditError, match="scale must be a number in"):
        ControlSpec("canny", "a/b", -1.0)
    with pytest.raises(VideditError, match="0 <= start < end <= 1"):
        ControlSpec("canny", "a/b", 1.0, 0.5, 0.5)


def test_conditions_must_be_the_stages_frames(tiny, wolf_frames):
    s = EditSettings(source_prompt=SOURCE, steps=2)
    with pytest.raises(VideditError, match="ControlNet conditions for 2 frames given to a stage of 1 frames"):
        invert_frames(tiny, wolf_frames[:1], s, control=conditions(tiny, wolf_frames, ("canny", "tiny-random")))
    subset = invert_frames(tiny, wolf_frames, s, subset=(1,), control=conditions(tiny, wolf_frames,
                                                                                  ("canny", "tiny-random")))
    alone = invert_frames(tiny, wolf_frames[1:], s, control=conditions(tiny, wolf_frames[1:],
                                                                        ("canny", "tiny-random")))
    assert torch.equal(subset.noise, alone.noise)


def test_a_hub_controlnet_offline_and_from_the_cache(tiny, wolf_frames, offline_hub):
    """A hub id goes through the model's download path: offline and not cached, one line naming
    the alternatives; once in the Hugging Face cache, loaded from there without the network."""
    with pytest.raises(VideditError) as e:
        Control([ControlSpec("canny", "lllyasviel/sd-controlnet-canny")], tiny)
    assert str(e.value) == (
        "'lllyasviel/sd-controlnet-canny' is not in the Hugging Face cache and cannot be downloaded (HF_HUB_OFFLINE "
        "is set); connect once to download it, or use a local ControlNet directory (ControlNetModel.save_pretrained) "
        "or --controlnet tiny-random")
    repo = offline_hub / "models--lllyasviel--sd-controlnet-canny"
    tiny_controlnet(tiny.unet).save_pretrained(repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    hub = conditions(tiny, wolf_frames, ("canny", "lllyasviel/sd-controlnet-canny"))
    assert hub.nets[0].name == "lllyasviel/sd-controlnet-canny"
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2)
    assert torch.equal(edit(tiny, wolf_frames, s, hub), edit(tiny, wolf_frames, s, conditions(
        tiny, wolf_frames, ("canny", "tiny-random"))))


# a tiny SDXL UNet: diffusers' own test size (tests/pipelines/stable_diffusion_xl, get_dummy_components)
SDXL_UNET = dict(block_out_channels=(2, 4), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                 transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
                 cross_attention_dim=64, norm_num_groups=1)


def test_an_sdxl_controlnet_gets_the_pooled_text_and_time_ids():
    """On an SDXL UNet the call's ``added_cond_kwargs`` (pooled text, time ids) reach the
    ControlNet too (SDXL ControlNets embed them as the UNet does): scale 0 adds nothing, scale 1
    moves the output (measured relative change 0.73)."""
    from videdit.control import ControlNetInput
    from videdit.core.conditioning import call_unet, pack_pooled, unet_inputs
    from videdit.core.loop import CallInfo

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**SDXL_UNET).eval()
        net = tiny_controlnet(unet).eval()
        x, images = torch.randn(2, 4, 8, 8), torch.rand(1, 2, 3, 64, 64)       # 2 frames; (K, F, 3, H, W)
        text = pack_pooled(torch.randn(2, 5, 64), torch.randn(2, 32))          # (2, 5 + 1, 64)
    t, info = torch.full((2,), 500), CallInfo(frames=(0, 1), n_branches=1)

    def run(*scales):
        k = len(scales)
        inputs = [ControlNetInput(nets=(net,) * k, scales=scales, images=images.expand(k, -1, -1, -1, -1),
                                  active=(frozenset(),) * k)] if scales else []
        with torch.no_grad(), unet_inputs(unet, inputs):
            return call_unet(unet, x, t, text, info)

    plain = run()
    assert float((run(0.0) - plain).abs().max()) == 0
    assert rel_error(run(1.0), plain) > 0.3, rel_error(run(1.0), plain)


def test_a_reference_branch_gets_no_residuals(tiny, wolf_frames):
    """``uncontrolled`` branches (cross_image's appearance image) see the UNet without the
    ControlNet, to the last bit, and the others see it, in a guided call of 2 branches x 2 frames."""
    from videdit.core.conditioning import call_unet, unet_inputs
    from videdit.core.loop import CallInfo

    control = conditions(tiny, wolf_frames, ("canny", "tiny-random"))
    x = torch.randn(2, 2, 2, 4, 8, 8).flatten(0, 2)                      # (halves*nb*F, C, h, w)
    text = tiny.encode_text(["", "", "", "", "a", "a", "b", "b"])         # (8, L, D)
    t, info = torch.full((8,), 500), CallInfo(frames=(0, 1), n_branches=2, guided=True)
    with torch.no_grad():
        plain = call_unet(tiny.unet, x, t, text, info).unflatten(0, (2, 2, 2))
        with unet_inputs(tiny.unet, [control.input([500], uncontrolled=(1,))]):
            out = call_unet(tiny.unet, x, t, text, info).unflatten(0, (2, 2, 2))   # (half, branch, frame, ...)
    assert torch.equal(out[:, 1], plain[:, 1])
    assert rel_error(out[:, 0], plain[:, 0]) > 0.05
