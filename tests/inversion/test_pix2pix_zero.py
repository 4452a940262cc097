"""pix2pix-zero's inversion (videdit/inversion/pix2pix_zero.py): its regularisers reduce their
losses, without them it is DDIM, and its KL term is diffusers' StableDiffusionPix2PixZeroPipeline's."""

import pytest
import torch

from tests.inversion.approximate_runs import rel_error, settings
from videdit.inversion.pix2pix_zero import Pix2PixZeroConfig, kl_divergence, regularise
from videdit.models import load_model
from videdit.pipeline import invert_frames


def _all_shifts_auto_corr(e):
    """The auto-correlation loss over every shift 1..4 (8x8 noise: one pyramid level)."""
    return sum((e * e.roll(d, dims=k)).mean((2, 3)).square().sum() for d in range(1, 5) for k in (2, 3))


def test_pix2pix_zero_regularisers_reduce_their_losses():
    gen = torch.Generator().manual_seed(0)
    out = 0.3 * torch.randn(2, 4, 8, 8) + 0.2 * torch.randn(2, 4, 1, 8)  # (F, C, h, w), rows correlated
    x = torch.randn(2, 4, 8, 8)
    ac = regularise(out, x, 0.5, "epsilon", Pix2PixZeroConfig(lambda_kl=0, reference_size=0), gen)
    assert _all_shifts_auto_corr(ac) < 0.98 * _all_shifts_auto_corr(out)
    kl = regularise(out, x, 0.5, "epsilon", Pix2PixZeroConfig(lambda_ac=0, reference_size=0), gen)
    assert kl_divergence(kl) < 0.05 * kl_divergence(out)
    # at tiny-random's 8x8 latents videdit's calibrated steps (reference_size 64) are 64x smaller than the reference's
    kl_small = regularise(out, x, 0.5, "epsilon", Pix2PixZeroConfig(lambda_ac=0, reference_size=64), gen)
    assert kl_divergence(kl) < kl_divergence(kl_small) < kl_divergence(out)


def test_pix2pix_zero_without_regularisation_is_ddim(tiny, wolf_frames):
    inv = invert_frames(tiny, wolf_frames, settings("pix2pix_zero", lambda_ac=0.0, lambda_kl=0.0))
    torch.testing.assert_close(inv.trajectory, invert_frames(tiny, wolf_frames, settings()).trajectory)
    regularised = invert_frames(tiny, wolf_frames, settings("pix2pix_zero"))
    assert rel_error(regularised.noise, inv.noise) > 0.01


def test_pix2pix_zero_kl_inversion_matches_diffusers(wolf_frames):
    """diffusers 0.42 still ships StableDiffusionPix2PixZeroPipeline (deprecated); its ``invert``
    with the auto-correlation weight 0 (its draws of random shifts are its own) and the KL term
    at its defaults (lambda 20, 5 rounds), conditional only, gives videdit's inverted noise to
    1e-5 (fp32, one frame, 10 steps), with videdit's steps at diffusers' own scale
    (reference_size=0: tiny-random's 8x8 latents would take 64x smaller steps otherwise)."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionPix2PixZeroPipeline

    model = load_model("tiny-random")   # invert() installs its own attention processors: a model of its own
    s = settings("pix2pix_zero", steps=10, scale=1, lambda_ac=0.0, reference_size=0)
    inv = invert_frames(model, wolf_frames[:1], s)
    pipe = StableDiffusionPix2PixZeroPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=DDIMScheduler.from_config(model.scheduler_config), feature_extractor=None, safety_checker=None,
        inverse_scheduler=DDIMInverseScheduler.from_config(model.scheduler_config), caption_generator=None,
        caption_processor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe.invert(prompt_embeds=model.encode_text(["a wolf"]), image=inv.source, num_inference_steps=10,
                         guidance_scale=1, lambda_auto_corr=0.0, lambda_kl=20.0, num_reg_steps=5,
                         output_type="pt").latents
    torch.testing.assert_close(inv.noise, theirs, atol=1e-5, rtol=1e-5)   # measured 2.4e-6 apart at most
    ddim = invert_frames(model, wolf_frames[:1], settings(steps=10, scale=1)).noise
    assert rel_error(theirs, ddim) > 1   # the KL steps moved it (measured 2.5)


def test_a_diverging_inversion_is_one_line_with_its_fix(tiny, shared_data):
    """At 32x32 images (4x4 latents) the reference's regularisation steps diverge to NaN on
    tiny-random; the inversion stops there with the option that scales them, which stays finite."""
    from videdit import io
    from videdit.errors import VideditError

    frames, _ = io.read_clip(shared_data / "videos" / "wolf.mp4", io.ReadOptions(size=(32, 32)))
    with pytest.raises(VideditError, match=r"^pix2pix_zero inversion diverged at 4x4 latents .*reference_size=64"):
        invert_frames(tiny, frames[[0, 10]], settings("pix2pix_zero", reference_size=0))
    inv = invert_frames(tiny, frames[[0, 10]], settings("pix2pix_zero", reference_size=64))
    assert bool(torch.isfinite(inv.trajectory).all())


def test_any_inversion_that_returns_nan_is_refused(tiny, wolf_frames):
    import dataclasses

    from videdit.errors import VideditError
    from videdit.inversion import INVERSIONS

    ddim = INVERSIONS["ddim"]

    def nan_run(inputs, config):
        inv = ddim.run(inputs, config)
        return dataclasses.replace(inv, trajectory=inv.trajectory * float("nan"))

    with INVERSIONS.temporarily(dataclasses.replace(ddim, name="_nan", run=nan_run)):
        with pytest.raises(VideditError, match=r"^the _nan inversion diverged \(its latents hold NaN or inf\)$"):
            invert_frames(tiny, wolf_frames, settings("_nan"))
