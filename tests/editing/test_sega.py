"""SEGA / LEDITS++ (videdit/editing/sega.py) on tiny-random with real frames: concepts, warm-up,
masks, momentum and cost in UNet evaluations; its CLI flags and preset."""

import pytest
import torch

from tests.editing.blending_runs import STEPS, SOURCE, edit, left_half
from tests.editing.edit_command import BASE, ROOT, parse, run
from videdit.attention import attention_processors
from videdit.config import make_config
from videdit.core import StepCallback, denoise, make_schedule
from videdit.editing import EditContext, get_editor
from videdit.editing.sega import SegaConfig
from videdit.pipeline import EditSettings, invert_frames


@pytest.fixture(scope="module")
def inverted(blending_inverted):
    return blending_inverted


def test_sega_concepts_from_texts_and_mappings():
    c = SegaConfig(concepts=["glasses", {"text": "fog", "scale": 3, "remove": True}]).concepts
    assert [(x.text, x.scale, x.remove) for x in c] == [("glasses", 5.0, False), ("fog", 3.0, True)]
    assert SegaConfig(concepts="hat").concepts[0].text == "hat"


def test_sega_scale_zero_and_no_concepts_are_plain(tiny, inverted):
    s, inv, _ = inverted("ddim")
    plain = edit(tiny, s, inv, "plain")
    assert torch.equal(edit(tiny, s, inv, "sega"), plain)
    assert torch.equal(edit(tiny, s, inv, "sega", concepts=[{"text": "glasses", "scale": 0}]), plain)
    assert not torch.equal(edit(tiny, s, inv, "sega", concepts=["glasses"]), plain)


@pytest.mark.parametrize("masking", ["noise", "intersect"])
def test_sega_remove_is_the_opposite_of_add(tiny, wolf_frames, masking):
    """One DDIM step is affine in the prediction, and the masks depend on |psi| only, so
    removing a concept moves the result exactly opposite to adding it."""
    s = EditSettings(source_prompt=SOURCE, target_prompt=SOURCE, steps=1, guidance=7.5)
    inv = invert_frames(tiny, wolf_frames, s)
    plain = edit(tiny, s, inv, "plain")
    add = edit(tiny, s, inv, "sega", concepts=[{"text": "sunglasses", "scale": 4}], masking=masking)
    rm = edit(tiny, s, inv, "sega", concepts=[{"text": "sunglasses", "scale": 4, "remove": True}], masking=masking)
    assert float((add - plain).norm()) > 1e-3
    torch.testing.assert_close(add - plain, -(rm - plain), atol=1e-5, rtol=0)


class Record(StepCallback):
    def __init__(self):
        self.latents = []

    def on_step_end(self, ctx, x):
        self.latents.append(x.clone())
        return x


def _run_plan(tiny, s, inv, editor, params, adjust=None):
    """The plan of ``editor`` run by the loop (DDIM inversion: no replay), recording every step."""
    sched = make_schedule(tiny.scheduler_config, STEPS)
    src, tgt, neg = tiny.encode_text([s.source_prompt, s.target_prompt, s.negative_prompt]).chunk(3)
    ctx = EditContext(model=tiny, inversion=inv, schedule=sched, source_cond=src, target_cond=tgt, uncond=neg,
                      guidance=s.guidance, source_prompt=s.source_prompt, target_prompt=s.target_prompt)
    spec = get_editor(editor)
    plan = spec.plan(ctx, make_config(spec.config, params, editor))
    if adjust is not None:
        adjust(plan)
    rec = Record()
    calls = []
    hook = tiny.unet.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        with attention_processors(tiny.unet, plan.processors):
            denoise(tiny.unet, plan.x, sched, plan.branches, callbacks=[*plan.callbacks, rec], info=plan.info)
    finally:
        hook.remove()
    return rec.latents, sum(calls)


def test_sega_warmup_leaves_the_first_steps_plain_and_costs_one_eval_per_concept(tiny, inverted):
    s, inv, _ = inverted("ddim")
    plain, plain_evals = _run_plan(tiny, s, inv, "plain", {})
    concepts = [{"text": "glasses", "scale": 6}, {"text": "fog", "scale": 3, "remove": True}]
    guided, evals = _run_plan(tiny, s, inv, "sega", {"concepts": concepts, "warmup": 2})
    for i in range(2):
        assert torch.equal(guided[i], plain[i]), f"step {i} is inside the warm-up"
    assert not torch.equal(guided[2], plain[2])
    n_frames = inv.noise.shape[0]
    assert plain_evals == STEPS * 2 * n_frames                 # CFG: uncond + target per frame
    assert evals - plain_evals == (STEPS - 2) * len(concepts) * n_frames
    late = [concepts[0], {**concepts[1], "warmup": 3}]         # a per-concept warm-up costs nothing before it
    _, evals = _run_plan(tiny, s, inv, "sega", {"concepts": late, "warmup": 2})
    assert evals - plain_evals == ((STEPS - 2) + (STEPS - 3)) * n_frames


def test_sega_noise_mask_keeps_the_top_of_the_guidance(tiny, inverted):
    s, inv, _ = inverted("ddim")
    plain, _ = _run_plan(tiny, s, inv, "plain", {})
    guided, _ = _run_plan(tiny, s, inv, "sega", {"concepts": ["glasses"], "masking": "noise", "threshold": 0.75})
    changed = (guided[0] - plain[0]).abs().sum(2) > 0          # (1, F, h, w): after the first step
    assert 0.2 <= float(changed.float().mean()) <= 0.3          # the top quarter of 64 pixels per frame


def test_sega_user_mask_confines_the_guidance(tiny, inverted):
    s, inv, _ = inverted("ddim")
    plain, _ = _run_plan(tiny, s, inv, "plain", {})
    guided, _ = _run_plan(tiny, s, inv, "sega", {"concepts": ["glasses"], "mask": left_half(), "threshold": 0.0})
    delta = (guided[0] - plain[0]).abs().sum(2)[0]             # (F, h, w)
    assert float(delta[..., 4:].max()) == 0 and float(delta[..., :4].min()) > 0


def test_sega_prompt_free_edit_reuses_the_loop_prediction_as_uncond(tiny, wolf_frames):
    """LEDITS++'s setting: no prompts, guidance 1; the loop's prediction is eps(uncond), so a
    step costs 1 + k evaluations per frame, and gives what computing eps(uncond) again gives."""
    s = EditSettings(source_prompt="", target_prompt="", steps=STEPS, guidance=1.0, inversion="ddim")
    inv = invert_frames(tiny, wolf_frames, s)
    params = {"concepts": ["glasses"], "masking": "noise"}
    fast, evals = _run_plan(tiny, s, inv, "sega", params)
    slow, slow_evals = _run_plan(tiny, s, inv, "sega", params,
                                 adjust=lambda plan: setattr(plan.callbacks[0], "out_is_uncond", False))
    n_frames = inv.noise.shape[0]
    assert evals == STEPS * 2 * n_frames and slow_evals == STEPS * 3 * n_frames
    torch.testing.assert_close(fast[-1], slow[-1], atol=1e-4, rtol=0)   # batch composition only


def test_sega_momentum_builds_up_during_warmup_but_acts_after_it(tiny, inverted):
    s, inv, _ = inverted("ddim")
    plain, plain_evals = _run_plan(tiny, s, inv, "plain", {})
    params = {"concepts": ["glasses"], "warmup": 2, "masking": "noise"}
    without, _ = _run_plan(tiny, s, inv, "sega", params)
    with_momentum, evals = _run_plan(tiny, s, inv, "sega", {**params, "momentum": 0.5})
    assert all(torch.equal(with_momentum[i], plain[i]) for i in range(2))
    assert not torch.equal(with_momentum[2], without[2])       # what was built up in the warm-up acts
    assert evals - plain_evals == STEPS * inv.noise.shape[0]   # the concept is evaluated from the first step


# --- the CLI's --concept flags and the LEDITS++ preset ------------------------------------------

def test_a_concept_scale_must_be_a_number(capsys):
    with pytest.raises(SystemExit):
        parse("--editor", "sega", "--concept", "hat=big")
    assert "expected TEXT=SCALE with a number" in capsys.readouterr().err


def test_ledits_preset_with_concepts_runs(tmp_path, shared_data, capsys):
    out = tmp_path / "ledits.mp4"
    code, stdout, err = run(capsys, "edit", shared_data / "videos" / "wolf.mp4", "-s", "a wolf", "-t", "a wolf",
                            "-o", out, "--config", ROOT / "configs" / "ledits.yaml", "--concept", "sunglasses=6",
                            "--remove-concept", "trees", *BASE)
    assert code == 0, err
    assert out.stat().st_size > 0
