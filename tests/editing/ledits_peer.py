"""diffusers' LEDITS++ pipeline built from a videdit model's parts, fed ddpm's noise draws, for the
equivalence tests of the ``ddpm`` inversion (tests/inversion/test_ddpm.py) and the ``ledits``
editor (tests/editing/test_ledits.py)."""

import torch
from diffusers import DDIMScheduler, LEditsPPPipelineStableDiffusion
from diffusers.pipelines.ledits_pp import pipeline_leditspp_stable_diffusion as ledits_module

from videdit.core.schedule import make_schedule
from videdit.inversion import Inversion
from videdit.inversion.ddpm import draw_noise


class IntTimestepDDIM(DDIMScheduler):
    """LEDITS++'s invert passes float timesteps to DDIMScheduler.add_noise, which indexes with
    them (an IndexError); cast them. The math is unchanged."""

    def add_noise(self, original_samples, noise, timesteps):
        return super().add_noise(original_samples, noise, timesteps.long())


def ledits_pipeline(model) -> LEditsPPPipelineStableDiffusion:
    """The pipeline on ``model``'s UNet, VAE and text encoder, with a DDIM scheduler (its
    edit-friendly DDPM inversion, Huberman-Spiegelglas et al., as ``ddpm``)."""
    scheduler = IntTimestepDDIM.from_config(model.scheduler_config)
    pipe = LEditsPPPipelineStableDiffusion(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                           unet=model.unet, scheduler=scheduler, safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ledits_invert(pipe, inv: Inversion, monkeypatch, *, seed: int = 0, source_prompt: str = "",
                  source_guidance_scale: float = 3.5) -> torch.Tensor:
    """``pipe.invert`` of ``inv``'s clean latents (one frame) over the same steps, its noise drawn
    by :func:`draw_noise` with ``seed`` and handed over in the order the pipeline draws (the
    least noisy step first) -> its noise maps (N - start, 1, C, h, w), the noisiest first.

    The pipeline inverts the last ``num_inversion_steps`` of int(num_inversion_steps * (1 + skip))
    steps; half a step more in the product keeps the int() off float rounding."""
    n, start = inv.n_steps, inv.start_step
    noise = draw_noise(inv.source, n, seed)                    # (N, 1, C, h, w), schedule order
    draws = iter(noise[i] for i in reversed(range(start, n)))
    monkeypatch.setattr(ledits_module, "randn_tensor", lambda shape, **kw: next(draws).reshape(shape))
    monkeypatch.setattr(pipe, "encode_image", lambda *args, **kw: (inv.source.clone(), None))
    pipe.invert(image=None, source_prompt=source_prompt, source_guidance_scale=source_guidance_scale,
                num_inversion_steps=n - start, skip=(start + 0.5) / (n - start))
    assert next(draws, None) is None, "the pipeline drew another number of noises"
    assert pipe.inversion_steps.tolist() == make_schedule(dict(pipe.scheduler.config), n).timesteps[start:].tolist()
    return pipe.zs
