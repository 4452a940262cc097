"""The presets named after Text2Video-Zero run its official recipes (Picsart-AI-Research/Text2Video-Zero
model.py): process_pix2pix (configs/text2video-zero.yaml) and process_controlnet_canny/_pose/_depth
(configs/text2video-zero-{canny,pose,depth}.yaml), resolved from the files as the CLI reads them."""

import inspect
from pathlib import Path

import av
import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from tests.editing.test_instruct_pix2pix import LAYER, PROMPT, probe_module
from tests.video.test_cross_frame import ProbeModule
from tests.test_cli import SAMPLE, run
from videdit.cli import _with_config, build_parser, temporal_modules
from videdit import io
from videdit.control import Control, canny, pair_controls
from videdit.core.euler import EulerAncestral
from videdit.models import load_model
from videdit.pipeline import EditSettings, edit_latents, invert_frames
from videdit.video import TemporalStack
from videdit.video.cross_frame import CrossFrame, CrossFrameConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def preset(name, *flags):
    return _with_config(build_parser(), ["edit", "in.mp4", "-t", PROMPT, "-o", "o.mp4",
                                         "--config", str(CONFIGS / f"{name}.yaml"), *flags])


class Calls:
    """Records a module class's forward arguments (bound by name) while it is patched in."""

    def __init__(self, monkeypatch, cls):
        self.seen, original = [], cls.forward
        signature = inspect.signature(original)

        def forward(module, *args, **kwargs):
            self.seen.append(signature.bind(module, *args, **kwargs).arguments)
            return original(module, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", forward)


def _frames_of(path):
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


# --- video InstructPix2Pix (process_pix2pix) ----------------------------------------------------

def test_text2video_zero_preset_is_process_pix2pix():
    a = preset("text2video-zero")
    assert (a.model, a.inversion, a.editor, dict(a.editor_param), a.steps, a.guidance, a.seed, a.window) == \
        ("timbrooks/instruct-pix2pix", "noise", "instruct_pix2pix", {"image_guidance": 1.0}, 50, 7.5, 0, 7)
    assert temporal_modules(a) == {"cross_frame": {"mode": "first"}} and a.control == a.controlnet == []
    s = EditSettings(target_prompt=PROMPT, editor=a.editor, inversion=a.inversion, steps=a.steps,
                     guidance=a.guidance, editor_params=dict(a.editor_param))
    assert (s.steps, s.guidance, s.editor_config.image_guidance, s.inversion_config.noise) == (50, 7.5, 1.0, "frame")


def test_text2video_zero_preset_runs_8_channels_euler_and_frame_0_anchor(shared_data, monkeypatch):
    """The preset's settings (3 steps instead of 50) on tiny-pix2pix, 4 frames: every UNet call takes
    8 channels (noisy latents + the frame's image latents), Euler ancestral steps the latents (3 steps),
    and every frame's self-attention takes frame 0's keys and values in each of the 3 guidance terms."""
    a = preset("text2video-zero", "--steps", "3")
    model = load_model("tiny-pix2pix", device="cpu")
    clip, _ = io.read_clip(shared_data / "videos" / "wolf.mp4", io.ReadOptions(size=(32, 32), max_frames=4))
    s = EditSettings(target_prompt=PROMPT, editor=a.editor, inversion=a.inversion, steps=a.steps,
                     guidance=a.guidance, seed=a.seed, editor_params=dict(a.editor_param), batch_size=3)
    unet = Calls(monkeypatch, UNet2DConditionModel)
    euler = []
    step = EulerAncestral.step
    monkeypatch.setattr(EulerAncestral, "step", lambda self, *args: euler.append(1) or step(self, *args))
    probes = probe_module(), probe_module()
    (name, options), = temporal_modules(a).items()
    assert name == "cross_frame"
    stack = TemporalStack([probes[0], CrossFrame(CrossFrameConfig(**options)), probes[1]])
    edit_latents(model, invert_frames(model, clip, s), s, temporal=stack)
    assert len(unet.seen) == 3 * 2 and {c["sample"].shape[1] for c in unet.seen} == {8}   # 3 steps x 2 batches
    assert {c["sample"].shape[0] for c in unet.seen} == {3 * 3, 3 * 1}   # 3 guidance terms x frames of the batch
    assert len(euler) == 3
    before, after = probes[0].probe.frames(1), probes[1].probe.frames(1)
    assert sorted(after) == [0, 1, 2, 3] and before[0][0].shape[:2] == (1, 3), LAYER
    for f in range(4):
        for i in (0, 1):   # keys, values
            torch.testing.assert_close(after[f][i], before[0][i], rtol=0, atol=1e-5)


def test_cli_runs_the_text2video_zero_preset_in_windows_of_7(tmp_path, capsys, monkeypatch):
    """9 frames: windows of 7 and 2 (the reference's chunks of 7 new frames, each from the reseeded
    generator), so frames 7 and 8 start from frames 0 and 1's noise; 9 frames written."""
    unet = Calls(monkeypatch, UNet2DConditionModel)
    out = tmp_path / "t2vz.mp4"
    code, stdout, err = run(capsys, "edit", SAMPLE, "--model", "tiny-pix2pix", "-t", PROMPT, "--steps", 2, "-o",
                            out, "--max-frames", 9, "--size", 32, "--no-cache", "--config",
                            CONFIGS / "text2video-zero.yaml")
    assert code == 0, err
    assert "(9 frames" in stdout and "0/2 windows" in stdout and _frames_of(out) == 9
    assert [c["sample"].shape[0] for c in unet.seen] == [3 * 7, 3 * 7, 3 * 2, 3 * 2]   # 2 steps per window
    first, second = unet.seen[0]["sample"][:, :4], unet.seen[2]["sample"][:, :4]   # the noisy latents' channels
    torch.testing.assert_close(second[:2], first[:2], rtol=0, atol=0)   # branch 0: frames 7, 8 and 0, 1
    assert not torch.equal(first[0], first[1])                          # a draw per frame


# --- ControlNet variants (process_controlnet_canny, _pose, _depth) ---------------------------------

@pytest.mark.parametrize("name, control, controlnet, fps", [
    ("canny", ["canny"], "lllyasviel/sd-controlnet-canny", None),
    ("pose", [], "fusing/stable-diffusion-v1-5-controlnet-openpose", 4),
    ("depth", [], "lllyasviel/sd-controlnet-depth", None),
])
def test_controlnet_presets_are_the_official_settings(name, control, controlnet, fps):
    a = preset(f"text2video-zero-{name}")
    assert (a.inversion, dict(a.inversion_param), a.editor, a.steps, a.guidance, a.seed, a.fps) == \
        ("noise", {"noise": "shared"}, "plain", 20, 9.0, 42, fps)
    assert a.control == control and a.controlnet == [f"{controlnet}=1.0"]
    assert a.target_suffix == "best quality, extremely detailed" + (
        ", HD, ultra-realistic, 8K, HQ, masterpiece, trending on artstation, art, smooth" if name == "pose" else "")
    assert temporal_modules(a) == {"cross_frame": {"mode": "first"}}
    assert a.negative.startswith("longbody, lowres, bad anatomy") and a.negative.endswith(
        "unrealistic" if name == "pose" else "worst quality, low quality")
    if control:
        (spec,) = pair_controls(a.control, a.controlnet)
        assert (str(spec.condition), spec.controlnet, spec.scale) == ("canny", controlnet, 1.0)


def test_control_flags_replace_the_presets_lists():
    """--control/--controlnet pair by position, so a flag replaces the file's list instead of adding to it;
    --target-suffix "" drops the preset's suffix."""
    a = preset("text2video-zero-canny", "--controlnet", "tiny-random")
    assert (a.control, a.controlnet) == (["canny"], ["tiny-random"])
    assert preset("text2video-zero-canny", "--target-suffix", "").target_suffix == ""
    a = preset("text2video-zero-pose", "--control", "pose=poses.mp4", "--controlnet", "tiny-random=0.5")
    assert (a.control, a.controlnet) == (["pose=poses.mp4"], ["tiny-random=0.5"])
    a = preset("text2video-zero-depth", "--control", "depth=d.mp4")
    assert a.controlnet == ["lllyasviel/sd-controlnet-depth=1.0"]


@pytest.mark.parametrize("value, message", [
    ("controlnet: tiny-random\ncontrol: canny\n", None),
    ("controlnet: {a: 1}\n", "config {}: controlnet must be a list of --controlnet values"),
    ("control: [1, 2]\n", "config {}: control must be a list of --control values"),
])
def test_control_keys_in_a_config_file(tmp_path, value, message):
    path = tmp_path / "c.yaml"
    path.write_text(value)
    argv = ["edit", "in.mp4", "-t", "x", "-o", "o.mp4", "--config", str(path)]
    if message is None:   # one entry needs no list
        a = _with_config(build_parser(), argv)
        assert (a.control, a.controlnet) == (["canny"], ["tiny-random"])
        return
    from videdit.errors import VideditError

    with pytest.raises(VideditError) as e:
        _with_config(build_parser(), argv)
    assert str(e.value) == message.format(path)


def test_cli_runs_the_canny_preset_from_one_noise_with_a_condition_per_frame(tmp_path, capsys, monkeypatch):
    """The canny preset on tiny-random with --controlnet tiny-random, 6 frames of the moving red circle,
    2 steps: the first UNet call of each guidance half sees the same latents in every frame (the reference's
    randn((1, 4, h/8, w/8)).repeat(f, 1, 1, 1)), the ControlNet gets each frame's own edges, and 6 frames
    are written."""
    import videdit.pipeline

    unet, net = Calls(monkeypatch, UNet2DConditionModel), Calls(monkeypatch, ControlNetModel)
    prompts, edit_video = [], videdit.pipeline.edit_video
    monkeypatch.setattr(videdit.pipeline, "edit_video", lambda *a, **kw: prompts.append(kw) or edit_video(*a, **kw))
    out = tmp_path / "canny.mp4"
    code, stdout, err = run(capsys, "edit", SAMPLE, "-t", "a blue circle", "--model", "tiny-random", "--controlnet",
                            "tiny-random", "--steps", 2, "-o", out, "--max-frames", 6, "--size", 64, "--no-cache",
                            "-q", "--config", CONFIGS / "text2video-zero-canny.yaml")
    assert code == 0, err
    assert _frames_of(out) == 6
    assert prompts[0]["target_prompt"] == "a blue circle, best quality, extremely detailed"   # prompt + ', ' + added
    assert prompts[0]["negative_prompt"].startswith("longbody, lowres")
    assert len(unet.seen) == len(net.seen) == 2   # one call of the 6 frames per step
    first = unet.seen[0]["sample"]                 # (2 halves x 6 frames, 4, 8, 8): uncond, then cond
    assert first.shape[0] == 12
    assert all(torch.equal(first[i], first[0]) for i in range(12))
    assert not torch.equal(unet.seen[1]["sample"][1], unet.seen[1]["sample"][0])   # the frames part after a step
    cond = net.seen[0]["controlnet_cond"]          # (12, 3, 64, 64): each frame's edges, in both halves
    frames, _ = io.read_clip(SAMPLE, io.ReadOptions(size=64, max_frames=6))
    edges = torch.from_numpy(canny(frames)).permute(0, 3, 1, 2).float() / 255   # thresholds 100, 200
    assert cond.shape == (12, 3, 64, 64) and torch.equal(cond[:6].float(), edges) and torch.equal(cond[6:], cond[:6])
    assert all(not torch.equal(edges[i], edges[0]) for i in range(1, 6))   # the circle moves: 324-459 pixels differ


CONTROLNET_LAYER = "controlnet0.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"


@pytest.mark.parametrize("controlnet", [True, False])
def test_cross_frame_acts_on_the_controlnet_too(tiny, controlnet):
    """The canny preset's settings (2 steps) on tiny-random with its ControlNet, 4 frames in batches of 2:
    every frame's self-attention in the ControlNet takes frame 0's keys and values in both guidance halves,
    as model.py sets CrossFrameAttnProcessor on the ControlNet too; cross_frame:controlnet=false leaves it."""
    a = preset("text2video-zero-canny", "--controlnet", "tiny-random", "--steps", "2")
    (name, options), = temporal_modules(a).items()
    s = EditSettings(target_prompt=PROMPT, negative_prompt=a.negative, inversion=a.inversion, steps=a.steps,
                     guidance=a.guidance, seed=a.seed, inversion_params=dict(a.inversion_param), batch_size=2)
    frames, _ = io.read_clip(SAMPLE, io.ReadOptions(size=64, max_frames=4))
    control = Control(pair_controls(a.control, a.controlnet), tiny).window(0, frames)
    probes = (ProbeModule(CONTROLNET_LAYER, controlnet=True), ProbeModule(CONTROLNET_LAYER, controlnet=True))
    stack = TemporalStack([probes[0], CrossFrame(CrossFrameConfig(**options, controlnet=controlnet)), probes[1]])
    edit_latents(tiny, invert_frames(tiny, frames, s), s, temporal=stack, control=control)
    before, after = probes[0].probe.frames(1), probes[1].probe.frames(1)
    assert sorted(after) == [0, 1, 2, 3] and before[0][0].shape[:2] == (2, 1)   # (guidance halves, branches)
    for f in range(1, 4):
        for i in (0, 1):   # keys, values
            taken = torch.allclose(after[f][i], before[0][i], rtol=0, atol=1e-5)
            assert taken == controlnet and not torch.allclose(before[f][i], before[0][i])
