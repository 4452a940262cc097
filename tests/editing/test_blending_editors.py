"""Masks and the blending/score editors (blended, diffedit, differential, sega) on tiny-random
with real frames: what they keep, where they edit, and how they schedule it."""

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from videdit.attention import attention_processors
from videdit.core import StepCallback, denoise, make_schedule
from videdit.editing import EditContext, get_editor
from videdit.editing.masks import (load_mask, mask_from_attention, mask_from_file, mask_from_noise_difference,
                                   mask_from_tensor, upsample_mask)
from videdit.editing.sega import SegaConfig
from videdit.errors import VideditError
from videdit.config import make_config
from videdit.inversion import INVERSIONS
from videdit.pipeline import EditSettings, edit_latents, invert_frames, reconstruct

STEPS = 4
SOURCE, TARGET = "a wolf in a forest", "a robot wolf in a snowy forest"
LATENT = (8, 8)      # tiny-random latents of 64x64 frames
FRAMES = (64, 64)


@pytest.fixture(scope="module")
def inverted(tiny, wolf_frames):
    """method -> (settings with target != source, inversion, reconstruction)."""
    cache = {}

    def get(method):
        if method not in INVERSIONS:
            pytest.skip(f"inversion {method!r} is not registered")
        if method not in cache:
            s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=STEPS, guidance=7.5, inversion=method)
            inv = invert_frames(tiny, wolf_frames, s)
            cache[method] = (s, inv, reconstruct(tiny, inv, s))
        return cache[method]

    return get


def edit(tiny, s, inv, editor, **params):
    return edit_latents(tiny, inv, dataclasses.replace(s, editor=editor, editor_params=params))


def left_half() -> torch.Tensor:
    m = torch.zeros(1, 1, *LATENT)
    m[..., : LATENT[1] // 2] = 1
    return m


# -- masks --------------------------------------------------------------------------------

def test_mask_file_of_another_aspect_ratio_is_an_error(tmp_path):
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), np.full((40, 80), 255, np.uint8))
    ratios = r"80x40 \(aspect ratio 2\.000\).*64x64 \(aspect ratio 1\.000\).*crop or pad"
    with pytest.raises(VideditError, match=ratios):
        mask_from_file(path, LATENT, frame_size=FRAMES)


def test_mask_file_of_the_same_ratio_is_resized(tmp_path):
    image = np.zeros((200, 200), np.uint8)
    image[:, 100:] = 255                                       # right half white = edit
    cv2.imwrite(str(tmp_path / "m.png"), image)
    np.save(tmp_path / "m.npy", np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32))
    m = mask_from_file(tmp_path / "m.png", LATENT, frame_size=FRAMES)
    assert m.shape == (1, 1, 8, 8) and m.dtype == torch.float32
    assert torch.equal(m[..., 4:], torch.ones(1, 1, 8, 4)) and torch.equal(m[..., :4], torch.zeros(1, 1, 8, 4))
    soft = mask_from_file(tmp_path / "m.npy", LATENT, frame_size=FRAMES)
    assert soft.shape == (1, 1, 8, 8) and 0 < float(soft.min()) < 0.1 and 0.9 < float(soft.max()) < 1
    # within 1% of the aspect ratio is accepted and resized
    cv2.imwrite(str(tmp_path / "near.png"), np.full((200, 201), 255, np.uint8))
    assert mask_from_file(tmp_path / "near.png", LATENT, frame_size=FRAMES).shape == (1, 1, 8, 8)
    with pytest.raises(VideditError, match="does not exist"):
        mask_from_file(tmp_path / "missing.png", LATENT, frame_size=FRAMES)


def test_tensor_masks_and_upsampling():
    m = mask_from_tensor(torch.ones(3, 16, 16), LATENT, frame_size=FRAMES, n_frames=3)
    assert m.shape == (3, 1, 8, 8) and torch.equal(m, torch.ones(3, 1, 8, 8))
    with pytest.raises(VideditError, match=r"values in \[0, 1\]"):
        mask_from_tensor(torch.full((8, 8), 2.0), LATENT, frame_size=FRAMES)
    with pytest.raises(VideditError, match="2 frames but 3"):
        mask_from_tensor(torch.ones(2, 8, 8), LATENT, frame_size=FRAMES, n_frames=3)
    with pytest.raises(VideditError, match="aspect ratio"):
        mask_from_tensor(torch.ones(8, 16), LATENT, frame_size=FRAMES)
    assert load_mask(None, LATENT, frame_size=FRAMES) is None
    up = upsample_mask(left_half(), (64, 64))
    assert up.shape == (1, 1, 64, 64) and float(up.min()) == 0 and float(up.max()) == 1
    assert float(up[..., :28].min()) == 1 and float(up[..., 36:].max()) == 0   # soft only at the seam
    down = upsample_mask(up, LATENT)                           # and back: exact away from the seam
    away = [0, 1, 2, 5, 6, 7]
    assert torch.equal(down[..., away], left_half()[..., away])


def test_mask_from_attention_normalises_thresholds_and_dilates():
    maps = torch.zeros(2, 2, 8, 8)                             # (F, k tokens, h, w)
    maps[0, 0, 2, 2], maps[0, 1, 2, 3] = 4.0, 1.0              # frame 0: token maps summed, max 4
    maps[1, 0] = 0.1                                           # frame 1: flat
    soft = mask_from_attention(maps, None)
    assert soft.shape == (2, 1, 8, 8) and float(soft[0, 0, 2, 2]) == 1 and float(soft[0, 0, 2, 3]) == 0.25
    assert torch.equal(soft[1], torch.ones(1, 8, 8))
    hard = mask_from_attention(maps, 0.5)
    assert int(hard[0].sum()) == 1
    assert int(mask_from_attention(maps, 0.5, dilate=1)[0].sum()) == 9
    assert int(mask_from_attention(torch.zeros(1, 1, 8, 8), 0.5).sum()) == 0   # no attention: no mask


def test_diffedit_mask_is_zero_for_identical_prompts_and_not_for_different(tiny, inverted):
    s, inv, _ = inverted("ddim")
    src, tgt, same, neg = tiny.encode_text([SOURCE, TARGET, SOURCE, ""]).chunk(4)
    sched = make_schedule(tiny.scheduler_config, STEPS)
    kw = dict(n_samples=3, seed=0)
    m_same = mask_from_noise_difference(tiny.unet, inv.source, src, same, neg, sched, **kw)
    m_diff = mask_from_noise_difference(tiny.unet, inv.source, src, tgt, neg, sched, **kw)
    assert m_same.shape == m_diff.shape == (2, 1, 8, 8)
    assert float(m_same.abs().max()) == 0
    assert set(m_diff.unique().tolist()) == {0.0, 1.0}
    assert 0.05 < float(m_diff.mean()) < 0.6                  # a region, not everything
    soft = mask_from_noise_difference(tiny.unet, inv.source, src, tgt, neg, sched, threshold=None, **kw)
    assert torch.equal((soft > 0.5).float(), m_diff) and 0 <= float(soft.min()) and float(soft.max()) <= 1


# -- blending editors -------------------------------------------------------------------------

@pytest.mark.parametrize("inversion", ["ddim", "ddpm", "edict"])
@pytest.mark.parametrize("editor", ["blended", "diffedit", "differential"])
def test_outside_the_mask_is_the_source(tiny, inverted, editor, inversion):
    """A binary mask: outside it, the result is the source latent (trajectory[-1]), which for an
    exact inversion is its reconstruction; inside, the target prompt changed it."""
    s, inv, rec = inverted(inversion)
    mask = left_half()
    z = edit(tiny, s, inv, editor, mask=mask)                  # (F, C, h, w)
    out, inside = (mask == 0).expand_as(z), (mask == 1).expand_as(z)
    torch.testing.assert_close(z[out], inv.source[out], atol=1e-6, rtol=0)
    if float((rec - inv.source).norm() / inv.source.norm()) < 1e-4:  # exact inversion
        assert float((z[out] - rec[out]).norm() / rec[out].norm()) < 1e-4
    change = float((z[inside] - rec[inside]).norm() / rec[inside].norm())
    assert change > 0.05, f"{editor} x {inversion}: the inside did not change ({change:.2e})"


def test_binary_differential_map_is_blended_diffusion(tiny, inverted):
    s, inv, _ = inverted("ddim")
    mask = left_half()
    assert torch.equal(edit(tiny, s, inv, "differential", mask=mask), edit(tiny, s, inv, "blended", mask=mask))


def _from_step(tiny, s, inv, start):
    """Plain sampling under the target prompt from trajectory[start] at step start (DDIM)."""
    sched = make_schedule(tiny.scheduler_config, STEPS)
    target, neg = tiny.encode_text([s.target_prompt, s.negative_prompt]).chunk(2)
    from videdit.core import Branches

    return denoise(tiny.unet, inv.trajectory[start][None], sched, Branches(target, neg, (s.guidance,)),
                   start_step=start)[0]


def test_differential_releases_a_pixel_when_the_steps_done_pass_one_minus_m(tiny, inverted):
    """A uniform map m holds everything on the source for the first N (1 - m) steps:
    m = 0.5 over 4 steps is plain sampling from trajectory[2]."""
    s, inv, _ = inverted("ddim")
    torch.testing.assert_close(edit(tiny, s, inv, "differential", mask=torch.full((8, 8), 0.5)),
                               _from_step(tiny, s, inv, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(edit(tiny, s, inv, "differential", mask=torch.full((8, 8), 0.75)),
                               _from_step(tiny, s, inv, 1), atol=1e-5, rtol=0)
    assert torch.equal(edit(tiny, s, inv, "differential", mask=torch.ones(8, 8)), edit(tiny, s, inv, "plain"))
    assert torch.equal(edit(tiny, s, inv, "differential", mask=torch.zeros(8, 8)), inv.source)


def test_diffedit_starts_the_edit_at_the_encode_ratio(tiny, inverted):
    s, inv, _ = inverted("ddim")
    everywhere = torch.ones(8, 8)
    torch.testing.assert_close(edit(tiny, s, inv, "diffedit", mask=everywhere, encode_ratio=0.5),
                               _from_step(tiny, s, inv, 2), atol=1e-5, rtol=0)
    assert torch.equal(edit(tiny, s, inv, "diffedit", mask=everywhere, encode_ratio=1.0), edit(tiny, s, inv, "plain"))


def test_diffedit_automatic_mask_edits_part_of_the_frame(tiny, inverted):
    s, inv, rec = inverted("ddim")
    z = edit(tiny, s, inv, "diffedit", n_samples=3)
    kept = (z - inv.source).abs().amax(1) == 0                  # (F, h, w) pixels left as the source
    assert 0.3 < float(kept.float().mean()) < 0.97


def test_blend_until_frees_the_last_steps(tiny, inverted):
    s, inv, _ = inverted("ddim")
    mask = left_half()
    full, part = edit(tiny, s, inv, "blended", mask=mask), edit(tiny, s, inv, "blended", mask=mask, blend_until=0.5)
    out = (mask == 0).expand_as(full)
    assert torch.equal(full[out], inv.source[out]) and not torch.equal(part[out], inv.source[out])
    assert torch.equal(edit(tiny, s, inv, "blended", mask=mask, blend_until=0.0), edit(tiny, s, inv, "plain"))


@pytest.mark.parametrize("editor,params,match", [
    ("blended", {"mask": "nope.png"}, "does not exist"),
    ("blended", {"blend_until": 2}, "blend_until"),
    ("diffedit", {"encode_ratio": 0}, "encode_ratio"),
    ("diffedit", {"n_samples": 0}, "n_samples"),
    ("differential", {"mask": 3}, "file path or a tensor"),
    ("sega", {"concepts": [{"txt": "a"}]}, "does not take txt"),
    ("sega", {"concepts": [{"text": "a", "scale": -1}]}, "remove=true"),
    ("sega", {"threshold": 1.0}, "threshold"),
    ("sega", {"masking": "both"}, "masking"),
    ("sega", {"warmup": 3, "cooldown": 2}, "cooldown"),
])
def test_bad_options_are_errors_with_the_fix(editor, params, match):
    with pytest.raises(VideditError, match=match):
        EditSettings(editor=editor, editor_params=params)


# -- SEGA / LEDITS++ -----------------------------------------------------------------------------

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
