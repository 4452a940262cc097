"""LEDITS++ (videdit/editing/ledits.py) on tiny-random with real frames: the reference's defaults,
noise and attention masks, the prompt-free edit's cost, diffusers' LEditsPPPipelineStableDiffusion
as a peer (noise masks on tiny-random; attention and intersect masks on a UNet with layers at 1/4 of
the latent side, which tiny-random lacks), and the preset."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from tests.editing.blending_runs import SOURCE, STEPS, edit, left_half
from tests.editing.concept_runs import run_plan
from tests.editing.edit_command import BASE, ROOT, run
from tests.editing.ledits_peer import ledits_invert, ledits_pipeline
from videdit.editing import EDITORS
from videdit.editing.ledits import LeditsConfig, ledits_smoothing
from videdit.errors import VideditError
from videdit.pipeline import EditSettings, edit_latents, invert_frames

TINY = {"attention_resolution": 2}   # tiny-random's down/up cross-attention runs at 1/1 and 1/2 of the latent


@pytest.fixture(scope="module")
def inverted(blending_inverted):
    return blending_inverted


def test_defaults_follow_the_reference():
    """diffusers' LEditsPPPipelineStableDiffusion: __call__'s edit_guidance_scale 5, edit_threshold
    0.9, edit_warmup_steps 0, use_intersect_mask=True with the noise mask at t <= 800, attention
    at latent/4; invert's num_inversion_steps=30 after skip=0.15 (the last 30 of 34 steps); no
    target prompt (videdit's guidance 1 with target = negative prompt)."""
    c = LeditsConfig(concepts=["hat"])
    assert (c.warmup, c.threshold, c.masking, c.intersect_t, c.attention_resolution) == (0, 0.9, "intersect", 800, 4)
    assert c.concepts[0].scale == 5.0 and not c.concept_tokens
    s = EditSettings(editor="ledits")
    assert (s.steps, s.guidance, s.start_step) == (34, 1.0, 4)
    assert "ledits_pp" in EDITORS["ledits"].reference


def test_ledits_smoothing_is_the_reference_kernel():
    """LeditsGaussianSmoothing (3x3, sigma 0.5, exp(-((x - m) / (2 sigma))^2)) after reflect
    padding, as LEDITS++'s __call__ applies it."""
    from diffusers.pipelines.ledits_pp.pipeline_leditspp_stable_diffusion import LeditsGaussianSmoothing

    maps = torch.rand(3, 1, 6, 5)
    want = LeditsGaussianSmoothing("cpu")(F.pad(maps, (1, 1, 1, 1), mode="reflect"))
    torch.testing.assert_close(ledits_smoothing(maps), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("masking", ["noise", "intersect"])
def test_ledits_remove_is_the_opposite_of_add(tiny, wolf_frames, masking):
    """One DDIM step is affine in the prediction, and the masks depend on |psi| and the concept's
    attention only, so removing a concept moves the result exactly opposite to adding it."""
    s = EditSettings(source_prompt=SOURCE, target_prompt="", steps=1, guidance=1.0)
    inv = invert_frames(tiny, wolf_frames, s)
    plain = edit(tiny, s, inv, "plain")
    params = dict(masking=masking, threshold=0.5, **TINY)   # at 0.9 the two masks of one step may not meet
    add = edit(tiny, s, inv, "ledits", concepts=[{"text": "sunglasses", "scale": 4}], **params)
    rm = edit(tiny, s, inv, "ledits", concepts=[{"text": "sunglasses", "scale": 4, "remove": True}], **params)
    assert float((add - plain).norm()) > 1e-3
    torch.testing.assert_close(add - plain, -(rm - plain), atol=1e-5, rtol=0)


def test_ledits_noise_mask_keeps_the_top_of_the_guidance(tiny, inverted):
    s, inv, _ = inverted("ddim")
    plain, _ = run_plan(tiny, s, inv, "plain", {})
    guided, _ = run_plan(tiny, s, inv, "ledits", {"concepts": ["glasses"], "masking": "noise", "threshold": 0.75})
    changed = (guided[0] - plain[0]).abs().sum(2) > 0          # (1, F, h, w): after the first step
    assert float(changed.float().mean()) == 0.25                # the top 16 of 64 cells per frame, all channels


def test_ledits_warmup_leaves_the_first_steps_plain_and_costs_one_eval_per_concept(tiny, inverted):
    s, inv, _ = inverted("ddim")
    plain, plain_evals = run_plan(tiny, s, inv, "plain", {})
    concepts = [{"text": "glasses", "scale": 6}, {"text": "fog", "scale": 3, "remove": True}]
    guided, evals = run_plan(tiny, s, inv, "ledits", {"concepts": concepts, "warmup": 2, "masking": "noise"})
    for i in range(2):
        assert torch.equal(guided[i], plain[i]), f"step {i} is inside the warm-up"
    assert not torch.equal(guided[2], plain[2])
    n_frames = inv.noise.shape[0]
    assert plain_evals == STEPS * 2 * n_frames                 # CFG: uncond + target per frame
    assert evals - plain_evals == (STEPS - 2) * len(concepts) * n_frames
    late = [concepts[0], {**concepts[1], "warmup": 3}]         # a per-concept warm-up costs nothing before it
    _, evals = run_plan(tiny, s, inv, "ledits", {"concepts": late, "warmup": 2, "masking": "noise"})
    assert evals - plain_evals == ((STEPS - 2) + (STEPS - 3)) * n_frames


def test_ledits_user_mask_confines_the_guidance(tiny, inverted):
    s, inv, _ = inverted("ddim")
    plain, _ = run_plan(tiny, s, inv, "plain", {})
    guided, _ = run_plan(tiny, s, inv, "ledits", {"concepts": ["glasses"], "mask": left_half(), "threshold": 0.0,
                                                  "masking": "noise"})
    delta = (guided[0] - plain[0]).abs().sum(2)[0]             # (F, h, w)
    assert float(delta[..., 4:].max()) == 0 and float(delta[..., :4].min()) > 0


def test_ledits_prompt_free_edit_reuses_the_loop_prediction_as_uncond(tiny, wolf_frames):
    """LEDITS++'s setting: no prompts, guidance 1; the loop's prediction is eps(uncond), so a
    step costs 1 + k evaluations per frame, and gives what computing eps(uncond) again gives."""
    s = EditSettings(source_prompt="", target_prompt="", steps=STEPS, guidance=1.0, inversion="ddim")
    inv = invert_frames(tiny, wolf_frames, s)
    params = {"concepts": ["glasses"], "masking": "noise"}
    fast, evals = run_plan(tiny, s, inv, "ledits", params)
    slow, slow_evals = run_plan(tiny, s, inv, "ledits", params,
                                adjust=lambda plan: setattr(plan.callbacks[0], "out_is_uncond", False))
    n_frames = inv.noise.shape[0]
    assert evals == STEPS * 2 * n_frames and slow_evals == STEPS * 3 * n_frames
    torch.testing.assert_close(fast[-1], slow[-1], atol=1e-4, rtol=0)   # batch composition only


def test_attention_masks_need_layers_at_their_resolution(tiny, inverted):
    s, inv, _ = inverted("ddim")
    with pytest.raises(VideditError, match=r"none there \(its concept calls ran at 8x8, 4x4\); set "
                                           r"attention_resolution"):
        edit(tiny, s, inv, "ledits", concepts=["glasses"])
    with pytest.raises(VideditError, match="power of two"):
        LeditsConfig(attention_resolution=3)


# LEDITS++ against diffusers: one frame, 5 steps at strength 0.8 (the pipeline's invert of 4 steps
# after a skip of one), no prompts, guidance 1, ddpm's noise draws handed to the pipeline.
CONCEPTS = [{"text": "sunglasses", "scale": 6.0, "threshold": 0.75}, {"text": "snow", "scale": 4.0, "remove": True,
                                                                        "warmup": 1}]
PEER_CONCEPTS = dict(editing_prompt=["sunglasses", "snow"], edit_guidance_scale=[6.0, 4.0], edit_threshold=[0.75, 0.9],
                     reverse_editing_direction=[False, True], edit_warmup_steps=[0, 1])


def _against_diffusers(model, frame, masking, monkeypatch, **peer_flags):
    s = EditSettings(steps=5, strength=0.8, guidance=1.0, inversion="ddpm", inversion_params={"zero_last": False},
                     editor="ledits", editor_params={"concepts": CONCEPTS, "masking": masking})
    inv = invert_frames(model, frame, s)
    pipe = ledits_pipeline(model)
    ledits_invert(pipe, inv, monkeypatch)
    theirs = pipe(output_type="latent", **PEER_CONCEPTS, **peer_flags).images     # (1, C, h, w)
    ours = edit_latents(model, inv, s)
    plain = edit_latents(model, inv, dataclasses.replace(s, editor="plain", editor_params={}))
    return float((ours - theirs).abs().max()), float((ours - plain).abs().max())


def test_matches_diffusers_ledits_with_noise_masks(tiny, wolf_frames, monkeypatch):
    """use_cross_attn_mask=False, use_intersect_mask=False (masks from the guidance alone), two
    concepts, one reversed and warmed up later, each its threshold: the same latents to 1e-4
    (measured 1.5e-5)."""
    err, change = _against_diffusers(tiny, wolf_frames[:1], "noise", monkeypatch, use_cross_attn_mask=False,
                                     use_intersect_mask=False)
    assert err <= 1e-4 and change > 1.0, (err, change)


@pytest.fixture(scope="module")
def four_levels(tiny):
    """tiny-random with a UNet whose down and up blocks have cross-attention at 1/1, 1/2 and 1/4 of
    the latent side and a mid block at 1/8 (Stable Diffusion's layout), random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32, 64, 64),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=32,
            attention_head_dim=8, norm_num_groups=8).eval()
    return dataclasses.replace(tiny, unet=unet, fingerprint="tiny-random-four-levels")


@pytest.mark.parametrize("masking, flags", [("intersect", {"use_intersect_mask": True}),
                                            ("attention", {"use_intersect_mask": False, "use_cross_attn_mask": True})])
def test_matches_diffusers_ledits_with_attention_masks(four_levels, shared_data, monkeypatch, masking, flags):
    """Attention masks from the layers at 1/4 of a 16x16 latent (4x4), averaged over them and
    their heads, summed over token positions 1..75, smoothed, thresholded and upsampled by
    nearest neighbours; intersected with the noise mask at timesteps <= 800 (the first step,
    801, has the attention mask alone): the same latents as diffusers to 1e-4 (measured 1.0e-5)."""
    from videdit import io

    frames, _ = io.read_clip(shared_data / "videos" / "wolf.mp4", io.ReadOptions(size=(128, 128), max_frames=1))
    err, change = _against_diffusers(four_levels, frames, masking, monkeypatch, **flags)
    assert err <= 1e-4 and change > 1.0, (err, change)


def test_ledits_preset_with_concepts_runs(tmp_path, shared_data, capsys):
    out = tmp_path / "ledits.mp4"
    code, stdout, err = run(capsys, "edit", shared_data / "videos" / "wolf.mp4", "-t", "", "-o", out,
                            "--config", ROOT / "configs" / "ledits.yaml", "--concept", "sunglasses=6",
                            "--remove-concept", "trees", "-E", "attention_resolution=2", *BASE)
    assert code == 0, err
    assert out.stat().st_size > 0
