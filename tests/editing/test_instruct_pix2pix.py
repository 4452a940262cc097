"""InstructPix2Pix on tiny-pix2pix: diffusers' StableDiffusionInstructPix2PixPipeline from the same
seed, Eq. 3 at scales 1, cross-frame attention to the first frame per guidance term (Text2Video-Zero),
the CLI, and refusals by model family."""

from pathlib import Path

import av
import pytest
import torch

from tests import peers
from tests.test_cli import SAMPLE, run
from tests.video.test_cross_frame import ProbeModule
from videdit.editing.instruct_pix2pix import ImageTextGuidance
from videdit.models import load_model
from videdit.pipeline import EditSettings, edit_latents, invert_frames
from videdit.video import TemporalStack
from videdit.video.cross_frame import CrossFrame, CrossFrameConfig

PROMPT = "make it snowy"
LAYER = "up_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"   # a self-attention layer of tiny-pix2pix
PRESET = Path(__file__).resolve().parents[2] / "configs" / "text2video-zero.yaml"


@pytest.fixture(scope="module")
def pix2pix():
    return load_model("tiny-pix2pix", device="cpu")


@pytest.fixture(scope="module")
def frames(shared_data):
    """Two wolf frames at 32x32: tiny-pix2pix's 2x VAE makes 16x16 latents."""
    from videdit import io

    clip, _ = io.read_clip(shared_data / "videos" / "wolf.mp4", io.ReadOptions(size=(32, 32)))
    return clip[[0, 10]]


def edit(model, frames, steps=5, seed=3, temporal=None, **kw):
    s = EditSettings(target_prompt=PROMPT, editor="instruct_pix2pix", steps=steps, seed=seed,
                     temporal=temporal or {}, **kw)
    return edit_latents(model, invert_frames(model, frames, s), s)


# diffusers runs the three terms only where guidance > 1 and image guidance >= 1; at 1 and 1 it runs the
# conditional term alone, which Eq. 3 reduces to. Measured max |ours - diffusers| / max |diffusers|:
# 2.1e-6 (7.5, 1.5), 3.4e-7 (1, 1); the latents of random weights reach 66, so the bound is relative.
# Another seed is 1.25 away.
@pytest.mark.parametrize("guidance, image_guidance", [(7.5, 1.5), (1.0, 1.0)])
def test_is_diffusers_pipeline_from_the_same_seed(pix2pix, frames, guidance, image_guidance):
    """5 steps, fp32, two frames; the same seed gives diffusers' generator: start noise, then each step's."""
    ours = edit(pix2pix, frames, guidance=guidance, editor_params={"image_guidance": image_guidance})
    image = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255   # [0, 1], as diffusers takes tensors
    theirs = peers.instruct_pix2pix(pix2pix)(
        prompt=[PROMPT] * len(frames), image=image, num_inference_steps=5, guidance_scale=guidance,
        image_guidance_scale=image_guidance, generator=torch.Generator().manual_seed(3), output_type="latent").images
    assert ours.shape == theirs.shape == (2, 4, 16, 16)
    err = float((ours - theirs).abs().max() / theirs.abs().max())
    assert err <= 1e-5, f"{err:.2e}"
    other_seed = edit(pix2pix, frames, seed=4, guidance=guidance, editor_params={"image_guidance": image_guidance})
    assert float((other_seed - theirs).abs().max() / theirs.abs().max()) > 0.1


def test_eq3_at_scales_1_is_the_conditional_output():
    """uncond + 1 (text - image) + 1 (image - uncond) = text, to float rounding (measured 3.8e-6 on outputs
    of std 10)."""
    out = torch.randn(3, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 10   # (branches, F, C, h, w)
    guided = ImageTextGuidance(1.0, 1.0).on_noise(None, None, out)
    assert guided.shape == out.shape and float((guided - out[0]).abs().max()) < 1e-5
    moved = ImageTextGuidance(7.5, 1.5).on_noise(None, None, out)[0]
    torch.testing.assert_close(moved, out[2] + 7.5 * (out[0] - out[1]) + 1.5 * (out[1] - out[2]))


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_low_precision_runs(pix2pix, frames, dtype):
    """The image channels and the step noise follow the UNet's dtype and device: 2 steps in fp16/bf16 land
    within 8 of the dtype's eps (relative) of fp32 (measured 3.9 and 3.7: the UNet's rounding, times guidance)."""
    ref = edit(pix2pix, frames[:1], steps=2)
    model = load_model("tiny-pix2pix", dtype=dtype)
    z = edit(model, frames[:1], steps=2)
    err = float((z.float() - ref).norm() / ref.norm())
    assert torch.isfinite(z).all() and err <= 8 * torch.finfo(model.dtype).eps, f"{err:.2e}"


def probe_module() -> ProbeModule:
    """A probe on tiny-pix2pix's ``LAYER`` (tests/video/test_cross_frame.py)."""
    return ProbeModule(LAYER)


def test_cross_frame_first_frame_anchor_per_guidance_term(pix2pix, shared_data):
    """Text2Video-Zero's recipe on 4 frames: every frame's self-attention takes frame 0's keys and values,
    in each of the three branches (CrossFrameAttnProcessor with unet_chunk_size=3)."""
    from videdit import io

    clip, _ = io.read_clip(shared_data / "videos" / "wolf.mp4", io.ReadOptions(size=(32, 32), max_frames=4))
    s = EditSettings(target_prompt=PROMPT, editor="instruct_pix2pix", steps=3, batch_size=3)
    probes = probe_module(), probe_module()
    stack = TemporalStack([probes[0], CrossFrame(CrossFrameConfig(mode="first")), probes[1]])
    z = edit_latents(pix2pix, invert_frames(pix2pix, clip, s), s, temporal=stack)
    before, after = probes[0].probe.frames(1), probes[1].probe.frames(1)
    assert sorted(after) == [0, 1, 2, 3] and before[0][0].shape[:2] == (1, 3)   # (guidance halves, branches)
    k0 = before[0][0]
    assert not torch.allclose(k0[:, 0], k0[:, 1]) and not torch.allclose(k0[:, 1], k0[:, 2])   # three terms
    for f in range(4):
        for i in (0, 1):   # keys, values
            torch.testing.assert_close(after[f][i], before[0][i], rtol=0, atol=1e-5)
    alone = edit_latents(pix2pix, invert_frames(pix2pix, clip, s), s)
    # it acts on the later frames (measured 0.024 relative on random weights), not on frame 0 (measured 0)
    assert float((z[1:] - alone[1:]).norm() / alone[1:].norm()) > 0.01
    torch.testing.assert_close(z[0], alone[0], rtol=0, atol=1e-4 * float(alone[0].abs().max()))


def _frames_of(path):
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_cli_edits_a_clip(tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code, stdout, err = run(capsys, "edit", SAMPLE, "--model", "tiny-pix2pix", "--editor", "instruct_pix2pix", "-t",
                            PROMPT, "--steps", 3, "-o", out, "--max-frames", 4, "--size", 32, "--no-cache", "-q")
    assert code == 0, err
    assert "wrote" in stdout and "(4 frames" in stdout and _frames_of(out) == 4


def test_cli_runs_the_text2video_zero_preset(tmp_path, capsys):
    """noise, instruct_pix2pix at image guidance 1.0, cross_frame first: the preset's settings are the run's."""
    from videdit.cli import _with_config, build_parser

    args = _with_config(build_parser(), ["edit", "in.mp4", "-t", PROMPT, "-o", "o.mp4", "--config", str(PRESET)])
    assert (args.inversion, args.editor, dict(args.editor_param), args.temporal, args.steps, args.guidance) == \
        ("noise", "instruct_pix2pix", {"image_guidance": 1.0}, [("cross_frame", {"mode": "first"})], 50, 7.5)
    out = tmp_path / "preset.mp4"
    code, stdout, err = run(capsys, "edit", SAMPLE, "--model", "tiny-pix2pix", "-t", PROMPT, "--steps", 3, "-o",
                            out, "--max-frames", 4, "--size", 32, "--no-cache", "-q", "--config", PRESET)
    assert code == 0, err
    assert _frames_of(out) == 4


@pytest.mark.parametrize("model, extra, message", [
    ("tiny-random", ["--editor", "instruct_pix2pix"],
     "editor 'instruct_pix2pix' does not run on SD1 models: it needs an InstructPix2Pix model (8-channel UNet "
     "conditioned on the source frame), e.g. --model timbrooks/instruct-pix2pix"),
    ("tiny-pix2pix", [], "inversion 'ddim' does not run on InstructPix2Pix models: its 8-channel UNet needs the "
     "source image as input; use --editor instruct_pix2pix"),
    ("tiny-pix2pix", ["--inversion", "noise", "--editor", "prompt_to_prompt"],
     "editor 'prompt_to_prompt' does not run on InstructPix2Pix models: its 8-channel UNet needs the source image "
     "as input; use --editor instruct_pix2pix"),
])
def test_refused_by_family_in_one_line(tmp_path, capsys, model, extra, message):
    out = tmp_path / "out" / "o.mp4"
    out.parent.mkdir()
    code, _, err = run(capsys, "edit", SAMPLE, "--model", model, "-t", PROMPT, "--steps", 2, "-o", out,
                       "--max-frames", 2, "--no-cache", "-q", *extra)
    assert code == 2 and err.strip() == f"videdit: error: {message}"
    assert list(out.parent.iterdir()) == []


def test_methods_lists_it_as_instruct_pix2pix_only(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")   # no line wrapped
    code, out, _ = run(capsys, "methods", "instruct_pix2pix", "noise")
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  instruct_pix2pix "))
    block = "\n".join(lines[at:at + 12])
    assert "models: InstructPix2Pix; no ControlNet" in block
    assert "reference settings: steps=100, guidance=7.5" in block and "options: image_guidance=1.5" in block
    assert "declares: has_source_branch=False, inversion=noise, schedule=euler_schedule" in block
    at = next(i for i, line in enumerate(lines) if line.startswith("  noise "))
    assert "models: SD1, SD2, SDXL, InstructPix2Pix; with ControlNet" in "\n".join(lines[at:at + 4])
