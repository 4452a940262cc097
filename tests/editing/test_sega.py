"""SEGA (videdit/editing/sega.py) on tiny-random with real frames: the official code's defaults,
per-channel thresholds, the weighted average during warm-up, momentum, cost in UNet evaluations,
diffusers' SemanticStableDiffusionPipeline as a peer, and the CLI's concept flags."""

import dataclasses
import warnings

import pytest
import torch

from tests.editing.blending_runs import SOURCE, STEPS, edit, left_half
from tests.editing.concept_runs import run_plan
from tests.editing.edit_command import parse
from videdit.editing import EDITORS
from videdit.editing.sega import SegaConfig
from videdit.pipeline import EditSettings, edit_latents, invert_frames


@pytest.fixture(scope="module")
def inverted(blending_inverted):
    return blending_inverted


def test_sega_concepts_from_texts_and_mappings():
    c = SegaConfig(concepts=["glasses", {"text": "fog", "scale": 3, "remove": True, "weight": 2}]).concepts
    assert [(x.text, x.scale, x.remove, x.weight) for x in c] == [("glasses", 5.0, False, 1.0), ("fog", 3.0, True, 2.0)]
    assert SegaConfig(concepts="hat").concepts[0].text == "hat"


def test_defaults_follow_the_official_code(tiny, inverted):
    """ml-research/semantic-image-editing pipeline_latent_edit_diffusion.py, as diffusers'
    SemanticStableDiffusionPipeline.__call__: edit_warmup_steps 10, edit_threshold 0.9,
    edit_momentum_scale 0.1, edit_mom_beta 0.4, edit_guidance_scale 5, 50 steps at guidance 7.5.
    In its warm-up (here the whole 4-step edit) the momentum builds up and nothing is applied:
    the edit is the plain one, bit for bit."""
    c = SegaConfig()
    assert (c.warmup, c.threshold, c.momentum, c.momentum_beta) == (10, 0.9, 0.1, 0.4)
    assert SegaConfig(concepts=["hat"]).concepts[0].scale == 5.0
    s = EditSettings(editor="sega")
    assert (s.steps, s.guidance, s.strength) == (50, 7.5, 1.0)
    assert "semantic-image-editing" in EDITORS["sega"].reference
    s, inv, _ = inverted("ddim")
    assert torch.equal(edit(tiny, s, inv, "sega", concepts=["glasses"]), edit(tiny, s, inv, "plain"))


def test_sega_scale_zero_and_no_concepts_are_plain(tiny, inverted):
    s, inv, _ = inverted("ddim")
    plain = edit(tiny, s, inv, "plain")
    assert torch.equal(edit(tiny, s, inv, "sega", warmup=0), plain)
    assert torch.equal(edit(tiny, s, inv, "sega", warmup=0, concepts=[{"text": "glasses", "scale": 0}]), plain)
    assert not torch.equal(edit(tiny, s, inv, "sega", warmup=0, concepts=["glasses"]), plain)


def test_sega_remove_is_the_opposite_of_add(tiny, wolf_frames):
    """One DDIM step is affine in the prediction, and the masks depend on |psi| only, so
    removing a concept moves the result exactly opposite to adding it."""
    s = EditSettings(source_prompt=SOURCE, target_prompt=SOURCE, steps=1, guidance=7.5)
    inv = invert_frames(tiny, wolf_frames, s)
    plain = edit(tiny, s, inv, "plain")
    add = edit(tiny, s, inv, "sega", concepts=[{"text": "sunglasses", "scale": 4}], warmup=0)
    rm = edit(tiny, s, inv, "sega", concepts=[{"text": "sunglasses", "scale": 4, "remove": True}], warmup=0)
    assert float((add - plain).norm()) > 1e-3
    torch.testing.assert_close(add - plain, -(rm - plain), atol=1e-5, rtol=0)


def test_sega_thresholds_each_channel(tiny, inverted):
    """SEGA's quantile is over the h x w grid of each channel (torch.quantile(|psi|.flatten(2),
    ..., dim=2)): threshold 0.75 changes the top 16 of 64 cells of every (frame, channel), and
    the channels keep different cells (a mask shared by the channels would keep the same)."""
    s, inv, _ = inverted("ddim")
    plain, _ = run_plan(tiny, s, inv, "plain", {})
    guided, _ = run_plan(tiny, s, inv, "sega", {"concepts": ["glasses"], "threshold": 0.75, "warmup": 0,
                                                "momentum": 0})
    changed = (guided[0] - plain[0])[0] != 0                    # (F, C, h, w): after the first step
    assert changed.flatten(2).sum(-1).tolist() == [[16] * 4] * 2
    assert all(int(changed[f].any(0).sum()) > 16 for f in range(2))


def test_sega_averages_the_concepts_past_their_warmup(tiny, inverted):
    """While another concept is in its warm-up, SEGA adds the weighted average of the terms of
    those past theirs (its weights normalised over them): one concept alone then acts at its
    own scale whatever its weight; once all are past, the weighted sum acts. Without momentum a
    concept in its warm-up costs no UNet evaluation."""
    s, inv, _ = inverted("ddim")
    alone, _ = run_plan(tiny, s, inv, "sega", {"concepts": ["glasses"], "warmup": 0, "momentum": 0})
    both, evals = run_plan(tiny, s, inv, "sega", {"concepts": [{"text": "glasses", "weight": 3},
                                                               {"text": "fog", "warmup": 2}], "warmup": 0,
                                                  "momentum": 0})
    plain, plain_evals = run_plan(tiny, s, inv, "plain", {})
    assert torch.equal(both[0], alone[0]) and torch.equal(both[1], alone[1])
    assert not torch.equal(both[2], alone[2])
    n_frames = inv.noise.shape[0]
    assert evals - plain_evals == (STEPS + STEPS - 2) * n_frames


def test_sega_momentum_builds_up_during_warmup_but_acts_after_it(tiny, inverted):
    s, inv, _ = inverted("ddim")
    plain, plain_evals = run_plan(tiny, s, inv, "plain", {})
    params = {"concepts": ["glasses"], "warmup": 2}
    without, _ = run_plan(tiny, s, inv, "sega", {**params, "momentum": 0})
    with_momentum, evals = run_plan(tiny, s, inv, "sega", {**params, "momentum": 0.5})
    assert all(torch.equal(with_momentum[i], plain[i]) for i in range(2))
    assert not torch.equal(with_momentum[2], without[2])       # what was built up in the warm-up acts
    assert evals - plain_evals == STEPS * inv.noise.shape[0]   # the concept is evaluated from the first step


def test_sega_user_mask_confines_the_guidance(tiny, inverted):
    s, inv, _ = inverted("ddim")
    plain, _ = run_plan(tiny, s, inv, "plain", {})
    guided, _ = run_plan(tiny, s, inv, "sega", {"concepts": ["glasses"], "mask": left_half(), "threshold": 0.0,
                                                "warmup": 0})
    delta = (guided[0] - plain[0]).abs().sum(2)[0]             # (F, h, w)
    assert float(delta[..., 4:].max()) == 0 and float(delta[..., :4].min()) > 0


@pytest.mark.parametrize("threshold", [0.0, 0.9])
def test_matches_diffusers_semantic_stable_diffusion(tiny, wolf_frames, threshold):
    """diffusers' SemanticStableDiffusionPipeline (DDIM, eta 0) from the same noise: three
    concepts with warm-ups 1, 3 and 2 (the weighted average, then the sum), a weight, a reversed
    direction, momentum 0.1 / 0.4: the same latents to 1e-5 relative (measured 3.1e-6 and 2.6e-6; it runs
    [uncond, text, concepts] as one UNet batch, videdit the concepts in a second)."""
    from diffusers import DDIMScheduler, SemanticStableDiffusionPipeline

    concepts = [{"text": "sunglasses", "scale": 6.0, "warmup": 1, "weight": 2.0},
                {"text": "snow", "scale": 4.0, "remove": True, "warmup": 3}, {"text": "hat", "scale": 3.0, "warmup": 2}]
    s = EditSettings(source_prompt="a wolf", target_prompt="a robot wolf", steps=6, editor="sega",
                     editor_params={"concepts": concepts, "threshold": threshold})
    inv = invert_frames(tiny, wolf_frames[:1], s)
    ours = edit_latents(tiny, inv, s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the pipeline is deprecated
        pipe = SemanticStableDiffusionPipeline(
            vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, unet=tiny.unet,
            scheduler=DDIMScheduler.from_config(tiny.scheduler_config), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt="a robot wolf", height=64, width=64, num_inference_steps=6, guidance_scale=7.5,
                  latents=inv.noise.clone(), editing_prompt=["sunglasses", "snow", "hat"],
                  reverse_editing_direction=[False, True, False], edit_guidance_scale=[6.0, 4.0, 3.0],
                  edit_warmup_steps=[1, 3, 2], edit_threshold=threshold, edit_momentum_scale=0.1, edit_mom_beta=0.4,
                  edit_weights=[2.0, 1.0, 1.0], output_type="latent").images   # (1, C, h, w)
    err = float((ours - theirs).norm() / theirs.norm())
    assert err <= 1e-5, err
    plain = edit_latents(tiny, inv, dataclasses.replace(s, editor="plain", editor_params={}))
    assert float((ours - plain).norm() / plain.norm()) > 0.1   # the concepts acted


def test_a_concept_scale_must_be_a_number(capsys):
    with pytest.raises(SystemExit):
        parse("--editor", "sega", "--concept", "hat=big")
    assert "expected TEXT=SCALE with a number" in capsys.readouterr().err
