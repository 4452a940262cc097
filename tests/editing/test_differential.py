"""Differential diffusion (videdit/editing/differential.py) on tiny-random with real frames,
against a transliteration of the official sampler: exx8/differential-diffusion, ``SD2/diff_pipe.py``,
``StableDiffusionDiffImg2ImgPipeline.__call__`` with ``prepare_latents`` (sampled with DDIM here)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from tests.editing.blending_runs import STEPS, edit, left_half
from videdit.errors import VideditError
from videdit.pipeline import EditSettings, edit_latents, invert_frames


@pytest.fixture(scope="module")
def inverted(blending_inverted):
    return blending_inverted


def official(tiny, z0, change_map, s, strength):
    """diff_pipe.py's loop: the map resized to latent size (torchvision's bilinear Resize of a
    tensor, no antialiasing), the source noised to every step's timestep with ONE draw
    (``prepare_latents`` -> ``scheduler.add_noise(latents, noise, timesteps)``), sampling from
    ``original_with_noise[0]``, and before step i > 0 the pixels with map > i / n replaced. The
    pipeline edits one image: each frame is edited alone, with the same draw."""
    sched = DDIMScheduler.from_config(tiny.scheduler_config)
    sched.set_timesteps(s.steps)
    timesteps = sched.timesteps[s.steps - min(int(s.steps * strength), s.steps):]           # get_timesteps
    m = F.interpolate(change_map[None, None], size=z0.shape[-2:], mode="bilinear", align_corners=False,
                      antialias=False)[0]                                                  # (1, h, w)
    noise = torch.randn((1, *z0.shape[1:]), generator=torch.Generator().manual_seed(s.seed)).expand_as(z0)
    original_with_noise = torch.stack([sched.add_noise(z0, noise, t) for t in timesteps])  # (n, F, C, h, w)
    thresholds = (torch.arange(len(timesteps), dtype=m.dtype) / len(timesteps)).view(-1, 1, 1)
    masks = m > thresholds                                                                # (n, h, w)
    cond, uncond = tiny.encode_text([s.target_prompt, s.negative_prompt]).chunk(2)
    emb = torch.cat([uncond.expand(len(z0), -1, -1), cond.expand(len(z0), -1, -1)])
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            if i == 0:
                latents = original_with_noise[0]
            else:
                mask = masks[i][None, None].float()                                       # (1, 1, h, w)
                latents = original_with_noise[i] * mask + latents * (1 - mask)
            u, c = tiny.unet(torch.cat([latents] * 2), t, encoder_hidden_states=emb).sample.chunk(2)
            latents = sched.step(u + s.guidance * (c - u), t, latents).prev_sample
    return latents


def soft_map() -> torch.Tensor:
    """A 64x64 map at frame size (a ramp with noise), so the resize and every threshold matter."""
    ramp = torch.linspace(0, 1, 64)[None].expand(64, 64)
    return (0.8 * ramp + 0.2 * torch.rand(64, 64, generator=torch.Generator().manual_seed(1))).clamp(0, 1)


def test_defaults_are_the_official_example():
    """SD2/run.py: 100 steps at guidance 7, the map alone sets the change (strength 1)."""
    s = EditSettings(editor="differential")
    assert (s.steps, s.guidance, s.strength, s.start_step) == (100, 7.0, 1.0, 0)
    assert s.editor_config.from_inversion is False


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_matches_the_official_sampler(tiny, wolf_frames, inverted, strength):
    """The same map, seed and steps: the official loop's result to 1e-5 relative (latents up to
    5 in size; largest difference measured 1.4e-5); it starts from the
    forward-noised source with one noise draw reused at every step (a draw per step, or a start
    from the inversion's noise, would differ by order 1)."""
    s, _, _ = inverted("ddim")
    s = dataclasses.replace(s, editor="differential", editor_params={"map": soft_map()}, strength=strength)
    inv = invert_frames(tiny, wolf_frames, s)
    ours = edit_latents(tiny, inv, s)
    theirs = official(tiny, inv.source, soft_map(), s, strength)
    assert float((ours - theirs).norm() / theirs.norm()) < 1e-5


def test_a_map_of_ones_keeps_the_source_and_zeros_edit_freely(tiny, inverted):
    """The official convention, 1 (white) = keep: ones hold every step's input on the noised
    source, so only the last step's denoising (from timestep 1) moves it; zeros are an edit of
    the noised source at full strength. videdit's ``mask`` is the same map inverted."""
    s, inv, _ = inverted("ddim")
    ones, zeros = torch.ones(8, 8), torch.zeros(8, 8)
    kept, free = edit(tiny, s, inv, "differential", map=ones), edit(tiny, s, inv, "differential", map=zeros)
    err = lambda z: float((z - inv.source).norm() / inv.source.norm())
    assert err(kept) < 0.1 and err(free) > 1                    # measured 0.044 and 5.3
    assert torch.equal(edit(tiny, s, inv, "differential", mask=zeros), kept)
    assert torch.equal(edit(tiny, s, inv, "differential", mask=ones), free)
    assert torch.equal(edit(tiny, s, inv, "differential", map=ones, from_inversion=True), inv.source)


def test_from_inversion_binary_map_is_blended_diffusion(tiny, inverted):
    s, inv, _ = inverted("ddim")
    mask = left_half()
    assert torch.equal(edit(tiny, s, inv, "differential", mask=mask, from_inversion=True),
                       edit(tiny, s, inv, "blended", mask=mask, from_inversion=True))


def test_from_inversion_releases_a_pixel_after_1_minus_m_of_the_steps(tiny, inverted):
    """``from_inversion``: a uniform map m holds everything on the inversion's trajectory for the
    first N m steps: m = 0.5 over 4 steps is plain sampling from trajectory[2]."""
    from tests.editing.blending_runs import from_step

    s, inv, _ = inverted("ddim")
    torch.testing.assert_close(edit(tiny, s, inv, "differential", map=torch.full((8, 8), 0.5), from_inversion=True),
                               from_step(tiny, s, inv, STEPS // 2), atol=1e-5, rtol=0)
    assert torch.equal(edit(tiny, s, inv, "differential", map=torch.zeros(8, 8), from_inversion=True),
                       edit(tiny, s, inv, "plain"))


def test_map_and_mask_together_are_an_error():
    with pytest.raises(VideditError, match="not both"):
        EditSettings(editor="differential", editor_params={"map": torch.ones(8, 8), "mask": torch.ones(8, 8)})
