"""Blended latent diffusion (videdit/editing/blended.py) on tiny-random with real frames, against
a transliteration of the official sampler: omriav/blended-latent-diffusion,
``scripts/text_editing_SD2.py``, ``BlendedLatnetDiffusion.edit_image`` and ``_read_mask``."""

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

from tests.editing.blending_runs import edit, left_half
from videdit.editing import get_editor
from videdit.pipeline import EditSettings, edit_context, edit_latents, invert_frames


@pytest.fixture(scope="module")
def inverted(blending_inverted):
    return blending_inverted


@pytest.fixture(scope="module")
def mask_file(tmp_path_factory):
    """A 64x64 grey-level mask (random levels): nearest resizing and area averaging disagree on it."""
    path = tmp_path_factory.mktemp("mask") / "mask.png"
    cv2.imwrite(str(path), np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8))
    return path


def read_mask(path, size=(8, 8)) -> torch.Tensor:
    """``_read_mask``: PIL grey, NEAREST resize to the latents' size, binarised at 0.5 (1 = edit)."""
    m = np.array(Image.open(path).convert("L").resize(size, Image.NEAREST)) / 255
    return torch.from_numpy((m >= 0.5).astype(np.float32))[None, None]                  # (1, 1, h, w)


def official(tiny, source, mask, s):
    """``edit_image`` of each frame alone: DDIM from seeded N(0, I) latents after skipping
    int(N * 0.25) steps; after each step at timestep t, the outside of the mask is
    ``add_noise(source, randn_like, t)``, a fresh draw each step from the same generator. The
    script draws for one image: every frame gets the same draws."""
    sched = DDIMScheduler.from_config(tiny.scheduler_config)
    sched.set_timesteps(s.steps)
    gen = torch.Generator().manual_seed(s.seed)
    one = (1, *source.shape[1:])                                                          # (1, C, h, w)
    latents = torch.randn(one, generator=gen).expand_as(source)
    cond, uncond = tiny.encode_text([s.target_prompt, ""]).chunk(2)
    emb = torch.cat([uncond.expand(len(source), -1, -1), cond.expand(len(source), -1, -1)])
    with torch.no_grad():
        for t in sched.timesteps[int(len(sched.timesteps) * 0.25):]:
            u, c = tiny.unet(torch.cat([latents] * 2), t, encoder_hidden_states=emb).sample.chunk(2)
            latents = sched.step(u + s.guidance * (c - u), t, latents).prev_sample
            noised = sched.add_noise(source, torch.randn(one, generator=gen).expand_as(source), t)
            latents = latents * mask + noised * (1 - mask)
    return latents


@pytest.fixture(scope="module")
def official_settings(tiny, wolf_frames, inverted, mask_file):
    """Settings at blended's reference strength (0.76: 3 of 4 steps run, 1 skipped) and their inversion."""
    s0, _, _ = inverted("ddim")
    s = EditSettings(source_prompt=s0.source_prompt, target_prompt=s0.target_prompt, steps=s0.steps,
                     editor="blended", editor_params={"mask": str(mask_file)})
    return s, invert_frames(tiny, wolf_frames, s)


def test_defaults_are_the_official_script():
    """50 steps, guidance 7.5, and the first int(50 * 0.25) = 12 steps skipped."""
    s = EditSettings(editor="blended")
    assert (s.steps, s.guidance, s.start_step) == (50, 7.5, 12)
    assert EditSettings(editor="blended", steps=4).start_step == int(4 * 0.25) == 1
    assert s.editor_config.from_inversion is False


def test_starts_from_seeded_noise_not_the_inversion(tiny, official_settings):
    s, inv = official_settings
    plan = get_editor("blended").plan(edit_context(tiny, inv, s), s.editor_config)
    noise = torch.randn((1, *inv.source.shape[1:]), generator=torch.Generator().manual_seed(s.seed))
    assert inv.start_step == 1 and torch.equal(plan.x[0], noise.expand_as(inv.source))
    assert float((plan.x[0] - inv.noise).abs().max()) > 1


def test_matches_the_official_sampler(tiny, official_settings, mask_file):
    """The same mask file, seed and steps: the official loop's result to 1e-5 relative. It
    re-noises the source with a fresh draw each step (one draw reused, or the inversion's
    trajectory, would differ by order 1) and reads the mask by nearest resizing and
    binarising (area averaging would give another mask)."""
    s, inv = official_settings
    mask = read_mask(mask_file)
    assert 0.2 < float(mask.mean()) < 0.8
    ours, theirs = edit_latents(tiny, inv, s), official(tiny, inv.source, mask, s)
    assert float((ours - theirs).norm() / theirs.norm()) < 1e-5
    area = torch.nn.functional.interpolate(torch.from_numpy(cv2.imread(str(mask_file), 0) / 255.).float()[None, None],
                                           size=(8, 8), mode="area")
    assert not torch.equal((area >= 0.5).float(), mask)          # the resize matters on this mask


def test_blend_until_frees_the_last_steps(tiny, inverted):
    s, inv, _ = inverted("ddim")
    mask = left_half()
    full = edit(tiny, s, inv, "blended", mask=mask, from_inversion=True)
    part = edit(tiny, s, inv, "blended", mask=mask, blend_until=0.5, from_inversion=True)
    out = (mask == 0).expand_as(full)
    assert torch.equal(full[out], inv.source[out]) and not torch.equal(part[out], inv.source[out])
    assert torch.equal(edit(tiny, s, inv, "blended", mask=mask, blend_until=0.0, from_inversion=True),
                       edit(tiny, s, inv, "plain"))


def test_from_inversion_starts_from_the_inverted_noise(tiny, official_settings):
    s, inv = official_settings
    s = dataclasses.replace(s, editor_params={**s.editor_params, "from_inversion": True})
    plan = get_editor("blended").plan(edit_context(tiny, inv, s), s.editor_config)
    assert torch.equal(plan.x[0], inv.noise)
