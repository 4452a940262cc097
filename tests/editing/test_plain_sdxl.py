"""The plain editor on tiny-sdxl against diffusers' ``StableDiffusionXLPipeline``."""

import pytest
import torch

from tests.inversion.approximate_runs import rel_error
from tests.peers import latent_edit, stable_diffusion_xl
from videdit.pipeline import EditSettings, edit_latents, invert_frames


@pytest.mark.parametrize("negative", ["", "blurry"])
def test_plain_is_diffusers_stable_diffusion_xl_pipeline(tiny_sdxl, wolf_frames, negative):
    """The plain editor after DDIM inversion is ``StableDiffusionXLPipeline`` + ``DDIMScheduler``
    (eta 0) from the inverted noise: both text encoders' penultimate states, the pooled embedding,
    time ids (64, 64, 0, 0, 64, 64), and an empty negative prompt as zeros
    (``force_zeros_for_empty_prompt``; diffusers' ``negative_prompt=None``). One 64x64 frame
    (32x32 latents), 10 steps, guidance 5; measured relative difference 3.0e-6 (3.1e-6 with a
    negative prompt; the explicit "" encoded instead of zeros would be 0.81 off)."""
    s = EditSettings(source_prompt="a wolf", target_prompt="a fox", negative_prompt=negative, steps=10,
                     guidance=5.0)
    inv = invert_frames(tiny_sdxl, wolf_frames[:1], s)
    z = edit_latents(tiny_sdxl, inv, s)
    pipe = stable_diffusion_xl(tiny_sdxl)
    with torch.no_grad():
        want = latent_edit(pipe, inv.noise, "a fox", 10, 5.0, negative_prompt=negative or None)
    assert pipe.scheduler.timesteps.tolist() == s.schedule(tiny_sdxl.scheduler_config).timesteps.tolist()
    assert rel_error(z, want) <= 1e-5, rel_error(z, want)
    assert rel_error(z, inv.noise) > 0.1   # it sampled


def test_empty_negative_is_zeros_only_where_the_model_says(tiny_sdxl):
    assert float(tiny_sdxl.encode_negative("").abs().max()) == 0.0
    assert float(tiny_sdxl.encode_negative("blurry").abs().max()) > 0.1
    assert float(tiny_sdxl.encode_text([""]).abs().max()) > 0.1   # an empty source or target prompt is encoded
