"""DDPM inversion (videdit/inversion/ddpm.py): the official code's defaults, the edit's strength
(the reference's skip), the zeroed last map, the noise's seed and sharing across frames, and
diffusers' LEDITS++ inversion as a peer."""

import dataclasses

import pytest
import torch

from tests.editing.ledits_peer import ledits_invert, ledits_pipeline
from tests.inversion.exact_runs import rel_error, settings_for
from videdit.core.ddpm import ddpm_sigma
from videdit.core.schedule import make_schedule
from videdit.errors import VideditError
from videdit.inversion import INVERSIONS
from videdit.pipeline import EditSettings, edit_latents, invert_frames, reconstruct


def test_defaults_follow_the_official_code(tiny, wolf_frames):
    """inbarhub/DDPM_inversion: main_run.py's --num_diffusion_steps 100, --cfg_src 3.5, --cfg_tar 15
    and --skip 36 (sampling starts at wts[100 - 36]); ddm_inversion/inversion_utils.py's
    inversion_forward_process sets zs[0], the last step's map, to zero after its loop."""
    s = EditSettings(inversion="ddpm")
    assert (s.steps, s.guidance, s.strength, s.start_step) == (100, 15.0, 0.64, 36)
    assert s.inversion_config.guidance == 3.5 and s.inversion_config.zero_last
    s = EditSettings(source_prompt="a wolf", inversion="ddpm", steps=10)   # 10 - int(6.4): starts at step 4
    inv = invert_frames(tiny, wolf_frames[:1], s)
    kept = invert_frames(tiny, wolf_frames[:1], dataclasses.replace(s, inversion_params={"zero_last": False}))
    maps, kept_maps = inv.extras["noise_maps"], kept.extras["noise_maps"]
    assert inv.start_step == 4 and inv.unet_evals == 6 * 2           # guided at 3.5, steps 4..9 only
    assert torch.count_nonzero(maps[:4]) == 0 and torch.count_nonzero(maps[-1]) == 0
    assert torch.equal(maps[4:-1], kept_maps[4:-1]) and torch.count_nonzero(kept_maps[-1]) == kept_maps[-1].numel()


def test_the_zeroed_last_map_ends_on_the_mean(tiny, wolf_frames):
    """With the last map zeroed the replay's last step is mu(x_1) = x_0 - sigma_1 z_1: it misses
    the source by sigma_1 times the kept map (measured: 4.1e-2 relative on these frames at 10
    steps, guidance 7.5); kept, the replay gives the source back exactly (0)."""
    errors, recs, invs = {}, {}, {}
    for zero_last in (True, False):
        s = settings_for("ddpm", 7.5, 10, strength=1.0, inversion_params={"zero_last": zero_last})
        invs[zero_last] = invert_frames(tiny, wolf_frames, s)
        recs[zero_last] = reconstruct(tiny, invs[zero_last], s)
        errors[zero_last] = rel_error(recs[zero_last], invs[zero_last].source)
    assert errors[False] == 0.0 and 3e-2 < errors[True] < 6e-2, errors
    sched = make_schedule(tiny.scheduler_config, 10)
    sigma = ddpm_sigma(float(sched.alphas[-1]), float(sched.alphas_prev[-1]))
    z = invs[False].extras["noise_maps"][-1]
    torch.testing.assert_close(recs[True].double(), recs[False].double() - sigma * z, atol=1e-5, rtol=0)


@pytest.mark.parametrize("strength", [0.7, 0.75])
def test_strength_starts_later_and_stays_exact(tiny, wolf_frames, two_branch, strength):
    """The reference's skip is the edit's strength: 10 - int(10 * strength) = 3 steps skipped,
    neither inverted nor sampled; with the last map kept and the maps' guidance the edit's,
    both branches replay the source exactly."""
    name, seen = two_branch
    s = settings_for("ddpm", strength=strength, inversion_params={"zero_last": False})
    inv = invert_frames(tiny, wolf_frames, s)
    assert inv.start_step == 3 and torch.equal(inv.noise, inv.trajectory[3])
    assert inv.unet_evals == 2 * 7  # guided, steps 3..9 only
    assert torch.count_nonzero(inv.extras["noise_maps"][:3]) == 0
    assert rel_error(reconstruct(tiny, inv, s), inv.source) <= 1e-4
    out = edit_latents(tiny, inv, dataclasses.replace(s, editor=name))  # both branches use the same maps
    assert [i for i, _ in seen] == list(range(3, 10))
    assert rel_error(out, inv.source) <= 1e-4


def test_the_per_method_skip_is_gone():
    with pytest.raises(VideditError, match="does not take skip"):
        EditSettings(inversion="ddpm", inversion_params={"skip": 0.3})


def test_matches_diffusers_ledits_inversion_and_edit(tiny, wolf_frames, monkeypatch):
    """diffusers' LEditsPPPipelineStableDiffusion.invert with a DDIMScheduler (edit-friendly DDPM)
    and __call__ without concepts, fed ddpm's noise draws in the order it draws them: the same
    noise maps (1e-4; measured 3.9e-5) and the same edit (1e-5; measured 4.7e-6). LEDITS++ keeps
    the last map (zero_last=False); its __call__ has no target prompt and predicts under its
    negative prompt, which is videdit's target prompt at guidance 1. 5 steps at strength 0.8
    are invert(num_inversion_steps=4) after a skip of one. The source prompt is empty: see the
    next test for a non-empty one."""
    s = EditSettings(target_prompt="a fox", steps=5, strength=0.8, guidance=1.0, inversion="ddpm",
                     inversion_params={"zero_last": False})
    inv = invert_frames(tiny, wolf_frames[:1], s)
    pipe = ledits_pipeline(tiny)
    zs = ledits_invert(pipe, inv, monkeypatch)                            # (4, 1, C, h, w)
    assert inv.start_step == 1 and zs.shape == (4, 1, 4, 8, 8)
    maps = inv.extras["noise_maps"][1:].float()
    assert float((zs - maps).abs().max()) <= 1e-4
    theirs = pipe(negative_prompt="a fox", output_type="latent").images   # (1, C, h, w)
    ours = edit_latents(tiny, inv, s)
    assert float((ours - theirs).abs().max()) <= 1e-5


def test_diffusers_ledits_inversion_guides_away_from_the_source_prompt(tiny, wolf_frames, monkeypatch):
    """diffusers' invert unpacks encode_prompt's (editing embeddings, negative embeddings) as
    (uncond_embedding, text_embeddings), so its guided prediction is
    eps(source) + g (eps("") - eps(source)). DDPM_inversion's inversion_forward_process and
    ml-research/ledits_pp's invert take eps("") + g (eps(source) - eps("")), as ddpm does: the
    pipeline's maps are ddpm's with the source and negative prompts swapped (1e-4)."""
    s = EditSettings(source_prompt="", negative_prompt="a wolf", target_prompt="", steps=5, strength=0.8,
                     guidance=1.0, inversion="ddpm", inversion_params={"zero_last": False})
    swapped = invert_frames(tiny, wolf_frames[:1], s)
    right = invert_frames(tiny, wolf_frames[:1], dataclasses.replace(s, source_prompt="a wolf", negative_prompt=""))
    zs = ledits_invert(ledits_pipeline(tiny), right, monkeypatch, source_prompt="a wolf")
    assert float((zs - swapped.extras["noise_maps"][1:].float()).abs().max()) <= 1e-4
    assert float((zs - right.extras["noise_maps"][1:].float()).abs().max()) > 0.1


def test_ddpm_noise_follows_the_seed(tiny, wolf_frames):
    a = invert_frames(tiny, wolf_frames[:1], settings_for("ddpm", steps=2, seed=1))
    b = invert_frames(tiny, wolf_frames[:1], settings_for("ddpm", steps=2, seed=2))
    assert not torch.equal(a.noise, b.noise)


def test_ddpm_noise_is_shared_by_the_frames_unless_asked_per_frame(tiny, wolf_frames):
    """noise='shared' (the default): x_i - sqrt(a_i) x_0 is the same draw for both frames, and
    a frame's trajectory is the one it gets inverted alone; noise='frame': a draw per frame. One
    frame alone gets the same noise either way."""

    def drawn(inv):   # (N, F, C, h, w): the noise of each step's latent
        a = make_schedule(tiny.scheduler_config, inv.n_steps).alphas.view(-1, 1, 1, 1, 1)
        return (inv.trajectory[:-1] - a.sqrt() * inv.source) / (1 - a).sqrt()

    shared_s = settings_for("ddpm", steps=3)
    frame_s = settings_for("ddpm", steps=3, inversion_params={"noise": "frame"})
    shared, frame = invert_frames(tiny, wolf_frames, shared_s), invert_frames(tiny, wolf_frames, frame_s)
    assert float((drawn(shared)[:, 0] - drawn(shared)[:, 1]).abs().max()) < 1e-4
    assert float((drawn(frame)[:, 0] - drawn(frame)[:, 1]).abs().mean()) > 0.5
    alone = invert_frames(tiny, wolf_frames[1:], shared_s)
    assert float((alone.trajectory[:, 0] - shared.trajectory[:, 1]).abs().max()) < 1e-4
    one_frame = invert_frames(tiny, wolf_frames[:1], frame_s)
    assert torch.equal(invert_frames(tiny, wolf_frames[:1], shared_s).trajectory, one_frame.trajectory)
    ddpm = INVERSIONS["ddpm"]
    assert ddpm.inverts_frames_apart(shared_s.inversion_config)
    assert not ddpm.inverts_frames_apart(frame_s.inversion_config)
    assert {d.option: d.kind for d in ddpm.departures()} == {"zero_last": "improves", "noise": "departs"}
    with pytest.raises(VideditError, match="ddpm noise must be one of"):
        invert_frames(tiny, wolf_frames, settings_for("ddpm", inversion_params={"noise": "per-frame"}))
