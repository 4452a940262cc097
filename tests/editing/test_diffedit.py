"""DiffEdit (videdit/editing/diffedit.py) on tiny-random with real frames, and against diffusers'
``StableDiffusionDiffEditPipeline`` (``pipeline_stable_diffusion_diffedit.py``: ``generate_mask``,
``invert``, ``__call__``) built from the same parts, fp32 on the CPU, one frame."""

import dataclasses

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionDiffEditPipeline

from tests.editing.blending_runs import SOURCE, TARGET, edit
from videdit.core import make_schedule
from videdit.editing.masks import mask_from_noise_difference
from videdit.pipeline import EditSettings, edit_latents, invert_frames

STEPS = 5


@pytest.fixture(scope="module")
def inverted(blending_inverted):
    return blending_inverted


@pytest.fixture(scope="module")
def pipe(tiny):
    p = StableDiffusionDiffEditPipeline(
        vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, unet=tiny.unet,
        scheduler=DDIMScheduler.from_config(tiny.scheduler_config), safety_checker=None, feature_extractor=None,
        inverse_scheduler=DDIMInverseScheduler.from_config(tiny.scheduler_config), requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def frame(tiny, wolf_frames):
    """One real frame's clean latents (1, C, h, w), as videdit encodes them."""
    return invert_frames(tiny, wolf_frames[:1], EditSettings(steps=1)).source


def test_defaults_are_diffusers(wolf_frames):
    """``__call__`` and ``invert``: inpaint_strength 0.8 of 50 steps at guidance 7.5, so the edit
    starts at step 10; ``generate_mask``: 10 maps at mask_encode_strength 0.5."""
    s = EditSettings(editor="diffedit")
    assert (s.steps, s.guidance, s.strength, s.start_step) == (50, 7.5, 0.8, 10)
    c = s.editor_config
    assert (c.mask_encode_strength, c.n_samples, c.clamp_ratio, c.threshold, c.aligned_blend) == (0.5, 10, 3.0, 0.5,
                                                                                                 False)


def test_mask_matches_diffusers_generate_mask(tiny, pipe, frame):
    """The same latents and generator seed: the same binary mask (at most 0.1% of cells differ)."""
    src, tgt, neg = tiny.encode_text([SOURCE, TARGET, ""]).chunk(3)
    ours = mask_from_noise_difference(tiny.unet, frame, src, tgt, neg, make_schedule(tiny.scheduler_config, STEPS),
                                      encode_ratio=0.5, n_samples=10, guidance=7.5, seed=0)   # (1, 1, h, w)
    theirs = pipe.generate_mask(image=frame, source_prompt=SOURCE, target_prompt=TARGET, num_maps_per_mask=10,
                                mask_encode_strength=0.5, num_inference_steps=STEPS, guidance_scale=7.5,
                                generator=torch.Generator().manual_seed(0), output_type="np")   # (1, h, w)
    theirs = torch.from_numpy(theirs).float()[:, None]
    assert 0.05 < float(theirs.mean()) < 0.95                  # a region, not all or nothing
    assert float((ours != theirs).float().mean()) <= 1e-3


@pytest.mark.parametrize("strength", [1.0, 0.8])
def test_inversion_matches_diffusers_invert(tiny, pipe, wolf_frames, frame, strength):
    """``--inversion ddim`` with guidance 7.5 under the source prompt (configs/diffedit.yaml) is
    diffusers' ``invert``: its latents (noisiest first) are trajectory[start:N], to 1e-5."""
    s = EditSettings(source_prompt=SOURCE, steps=STEPS, inversion="ddim", inversion_params={"guidance": 7.5},
                     strength=strength)
    inv = invert_frames(tiny, wolf_frames[:1], s)
    theirs = pipe.invert(prompt=SOURCE, image=frame, num_inference_steps=STEPS, inpaint_strength=strength,
                         guidance_scale=7.5).latents                    # (1, n, C, h, w)
    ours = inv.trajectory[inv.start_step:STEPS].transpose(0, 1)         # (1, n, C, h, w)
    assert ours.shape == theirs.shape == (1, STEPS - s.start_step, 4, 8, 8)
    assert float((ours - theirs).abs().max()) < 1e-5


def test_edit_matches_diffusers_call(tiny, pipe, wolf_frames, frame):
    """The whole edit at diffusers' defaults (strength 0.8, guidance 7.5, inversion at 7.5, the
    automatic mask): ``__call__`` blends with the inverted latent of the step's own timestep,
    ``image_latents[i]``; the result agrees to 1e-5 relative (guidance 7.5 amplifies float rounding:
    the largest difference measured is 2e-5 on latents of about unit size)."""
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=STEPS, inversion="ddim",
                     inversion_params={"guidance": 7.5}, editor="diffedit")
    assert s.start_step == 1                                            # 5 - int(5 * 0.8)
    inv = invert_frames(tiny, wolf_frames[:1], s)
    ours = edit_latents(tiny, inv, s)
    gen = torch.Generator().manual_seed(0)
    mask = pipe.generate_mask(image=frame, source_prompt=SOURCE, target_prompt=TARGET, num_inference_steps=STEPS,
                              generator=gen, output_type="np")
    latents = pipe.invert(prompt=SOURCE, image=frame, num_inference_steps=STEPS).latents
    theirs = pipe(prompt=TARGET, mask_image=mask, image_latents=latents, num_inference_steps=STEPS,
                  output_type="latent").images
    assert 0.05 < float(mask.mean()) < 0.95
    assert float((ours - theirs).norm() / theirs.norm()) < 1e-5
    aligned = edit_latents(tiny, inv, dataclasses.replace(s, editor_params={"aligned_blend": True}))
    keep = torch.from_numpy(mask == 0)[:, None].expand_as(ours)
    assert torch.equal(aligned[keep], inv.source[keep])                # the paper's alignment keeps z0 outside
    assert float((ours[keep] - inv.source[keep]).abs().max()) > 1e-3   # diffusers' ends one level noisier


def test_a_user_mask_is_binarised_and_everywhere_is_plain_sampling(tiny, inverted):
    """``preprocess_mask`` binarises at 0.5: a mask of 0.6 edits everywhere, i.e. plain sampling
    from the inversion's start; 0.4 keeps the source trajectory everywhere."""
    s, inv, _ = inverted("ddim")
    assert torch.equal(edit(tiny, s, inv, "diffedit", mask=torch.full((8, 8), 0.6)), edit(tiny, s, inv, "plain"))
    kept = edit(tiny, s, inv, "diffedit", mask=torch.full((8, 8), 0.4))
    assert torch.equal(kept, inv.trajectory[-2])                        # the last step's own level


def test_diffedit_automatic_mask_edits_part_of_the_frame(tiny, inverted):
    s, inv, rec = inverted("ddim")
    z = edit(tiny, s, inv, "diffedit", n_samples=3, aligned_blend=True)
    kept = (z - inv.source).abs().amax(1) == 0                  # (F, h, w) pixels left as the source
    assert 0.3 < float(kept.float().mean()) < 0.97
