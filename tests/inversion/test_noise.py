"""The ``noise`` entry: no inversion, seeded Gaussian noise (InstructPix2Pix's and Text2Video-Zero's start)."""

import dataclasses

import pytest
import torch

from videdit.errors import VideditError
from videdit.inversion import INVERSIONS, InversionCache
from videdit.inversion.noise import after_initial_noise
from videdit.pipeline import EditSettings, edit_latents, invert_frames
from videdit.registry import MODEL_FAMILIES


def settings(**kw):
    return EditSettings(source_prompt="a wolf", target_prompt="a robot wolf", steps=4, inversion="noise", **kw)


class NoUnet:
    """A forward pre-hook that fails the test if the UNet runs."""

    def __call__(self, module, args):
        raise AssertionError("the noise inversion ran the UNet")


def test_record_is_the_seeded_draw_and_the_forward_process(tiny, wolf_frames):
    s = settings(seed=7)
    handle = tiny.unet.register_forward_pre_hook(NoUnet())
    try:
        inv = invert_frames(tiny, wolf_frames, s)
    finally:
        handle.remove()
    z0 = tiny.encode_images(wolf_frames)
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(7))   # diffusers' prepare_latents' draw
    assert inv.unet_evals == 0 and inv.trajectory.shape == (5, 2, 4, 8, 8)
    assert torch.equal(inv.noise, eps) and torch.equal(inv.source, z0)
    a = s.schedule(tiny.scheduler_config).alphas
    for i in (1, 2, 3):   # the source noised with the same draw, at each step's level
        torch.testing.assert_close(inv.trajectory[i], a[i].sqrt().float() * z0 + (1 - a[i]).sqrt().float() * eps)
    assert not torch.equal(invert_frames(tiny, wolf_frames, settings(seed=8)).noise, eps)


def test_runs_on_every_family_and_is_not_cached(tiny, wolf_frames, tmp_path):
    assert INVERSIONS["noise"].families == MODEL_FAMILIES and not INVERSIONS["noise"].refuses
    cache = InversionCache(tmp_path)
    first = invert_frames(tiny, wolf_frames, settings(), cache=cache)
    again = invert_frames(tiny, wolf_frames, settings(), cache=cache)
    assert not again.cached and torch.equal(first.trajectory, again.trajectory) and not any(tmp_path.iterdir())


def test_generator_after_the_draw_continues_one_stream():
    """The sampler's noise continues the generator that drew the start noise, as diffusers' one generator does."""
    gen = torch.Generator().manual_seed(3)
    torch.randn(2, 4, 8, 8, generator=gen)
    assert torch.equal(torch.randn(5, generator=after_initial_noise(torch.Size([2, 4, 8, 8]), 3)),
                       torch.randn(5, generator=gen))


def test_strength_starts_from_the_noised_source(tiny, wolf_frames):
    """SDEdit: with strength 0.5 the plain editor starts at step 2 from the source noised to that level."""
    s = settings(strength=0.5)
    inv = invert_frames(tiny, wolf_frames, s)
    assert inv.start_step == 2 and torch.equal(inv.noise, inv.trajectory[2])
    full = edit_latents(tiny, invert_frames(tiny, wolf_frames, settings()), settings())
    half = edit_latents(tiny, inv, s)
    src = inv.source
    # half the steps from the noised source ends nearer the source than sampling from pure noise
    # (relative distance measured 0.89 against 4.98 on random weights)
    assert float((half - src).norm()) < 0.5 * float((full - src).norm())


def test_an_editor_that_starts_from_noise_takes_no_other_inversion():
    s = EditSettings(target_prompt="make it snowy", editor="instruct_pix2pix")
    assert s.inversion == "noise" and dataclasses.replace(s, editor="plain").inversion == "noise"
    assert EditSettings(target_prompt="x").inversion == "ddim"
    with pytest.raises(VideditError, match=r"editor 'instruct_pix2pix' starts from inversion 'noise', as its "
                                           r"reference does; leave the inversion out \(got 'ddim'\)"):
        EditSettings(target_prompt="make it snowy", editor="instruct_pix2pix", inversion="ddim")
