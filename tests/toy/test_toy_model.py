"""The shipped toy model (videdit/toy/model): loading paths, and the reconstruction bounds of
issues 2 and 4 measured on it. Numbers are for the committed weights; retraining the model
means re-measuring them (tools/tables.py inversions --model toy)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.inversion.exact_runs import EXACT_OPTIONS
from videdit.models import load_model
from videdit.pipeline import EditSettings, invert_frames, reconstruct
from videdit.toy.world import sample_scenes

TOY = Path(__file__).resolve().parents[2] / "videdit" / "toy" / "model"
pytestmark = pytest.mark.skipif(not (TOY / "model_index.json").exists(), reason="toy model not exported")


@pytest.fixture(scope="module")
def toy():
    return load_model("toy")


@pytest.fixture(scope="module")
def scenes():
    return sample_scenes(seed=1234, n=2)


def test_diffusers_pipeline_loads_and_generates():
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(TOY, low_cpu_mem_usage=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red circle on a gray background", num_inference_steps=10, guidance_scale=4.0,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


def errors(toy, scenes, method, guidance, steps=20, params=None):
    total = 0.0
    for s in scenes:
        settings = EditSettings(source_prompt=s.caption, target_prompt=s.caption, steps=steps, guidance=guidance,
                                inversion=method, inversion_params=params or {})
        inv = invert_frames(toy, s.image[None], settings)
        total += float((reconstruct(toy, inv, settings) - inv.source).norm() / inv.source.norm())
    return total / len(scenes)


def test_ddim_reconstruction_bound(toy, scenes):
    """Issue 2: on a trained model DDIM's guidance-1 reconstruction is close: 4.9e-2 at 50
    steps on these two scenes (0.10 at 20 steps), against 0.36 on tiny-random."""
    assert errors(toy, scenes, "ddim", 1.0, steps=50) < 0.08


@pytest.mark.parametrize("method", ["edict", "bdia", "direct", "ddpm"])
def test_exact_inversions_on_the_toy_model(toy, scenes, method):
    assert errors(toy, scenes, method, 7.5, params=EXACT_OPTIONS.get(method)) <= 1e-4


@pytest.mark.slow   # about 22 s; on tiny-random by default: tests/inversion/test_null_text.py
def test_null_text_is_eight_times_below_ddim_at_guidance_7_5(toy, scenes):
    """Issue 4: null-text at the reference's decaying learning rate >= 8x below plain DDIM at
    guidance 7.5 (20 steps here; measured 0.065 against DDIM's 0.59)."""
    assert errors(toy, scenes, "null_text", 7.5) * 8 <= errors(toy, scenes, "ddim", 7.5)


@pytest.mark.slow
def test_null_text_is_ten_times_below_ddim_at_a_constant_rate(toy, scenes):
    """videdit's option lr_decay=0 (a constant learning rate): >= 10x below plain DDIM (measured
    0.055 against 0.59)."""
    assert errors(toy, scenes, "null_text", 7.5, params={"lr_decay": 0.0}) * 10 <= errors(toy, scenes, "ddim", 7.5)


@pytest.mark.slow
def test_approximate_inversions_beat_ddim_at_guidance_7_5_in_50_steps(toy, scenes):
    """Issue 4: negative-prompt, fixed-point and AIDI below plain DDIM at 50 steps, the last two
    inverted at the edit's guidance with 5 plain iterations, as docs/methods.md's table runs
    them (measured for the step-5300 weights: DDIM 0.60, fixed-point 0.06; at 20 steps one
    scene has a step whose fixed point the plain iteration cannot reach, see fixed_point.py).
    Slow (a minute on 2 cores): 200 UNet evaluations a scene."""
    ddim = errors(toy, scenes, "ddim", 7.5, steps=50)
    params = {"npi": {}, "aidi": {"guidance": None},
              "fixed_point": {"guidance": None, "iterations": 5, "tol": 1e-5, "average": False, "reg_steps": 0,
                              "pick": "best"}}
    for method, p in params.items():
        assert errors(toy, scenes, method, 7.5, steps=50, params=p) < ddim, method


def test_keep_background_localises_a_colour_edit(toy, tmp_path):
    """A colour edit (direct inversion + prompt-to-prompt's word swap) with keep_background: the
    object takes the new colour, the frame outside the changed latents is the input to the level,
    and that outside is most of the frame (the change mask found the object, not everything)."""
    from videdit.pipeline import edit_image
    from videdit.toy.scores import detect_objects
    from videdit.toy.world import WorldObject, make_scene

    scene = make_scene((WorldObject("square", "red", (30.0, 34.0), 14.0, 10.0),), ("gray",))
    target = scene.caption.replace("red", "blue")
    kw = dict(source_prompt=scene.caption, target_prompt=target, model=toy, steps=25, guidance=4.0,
              inversion="direct", editor="prompt_to_prompt", editor_params={"mode": "replace"},
              cache_dir=tmp_path)   # one inversion for both edits
    plain, kept = edit_image(scene.image, **kw), edit_image(scene.image, keep_background=True, **kw)
    for out in (plain, kept):
        found = detect_objects(out)
        assert found and found[0].colour == "blue" and found[0].shape == "square"
    untouched = (kept == scene.image).all(-1)
    assert untouched.mean() > 0.6 and not untouched[scene.masks[0]].any()
    assert (plain == scene.image).all(-1).mean() < 0.2          # without it the VAE moves almost every pixel
