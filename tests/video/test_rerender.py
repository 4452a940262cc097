"""rerender: Rerender-A-Video's key-frame translation. Keyframes 0, 1, 1 + interval, ...
sampled in turn (first frame once, the others twice); cross-frame attention to the first and
previous keyframe on the decoder; x0 replaced (not blended) by the first frame's warped x0 in
the first 10% of the steps; AdaIN to the first frame's statistics; the same seeded noise for
every keyframe; pixel-aware fusion strictly inside 50-80% of the steps; the frames between
from the keyframes; the preset's official values."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import SHARED_DATA
from videdit import io
from videdit.cli import main
from videdit.errors import VideditError
from videdit.pipeline import EditSettings, edit_frames, edit_video
from videdit.toy import sample_clip
from videdit.video import TEMPORAL, Window
from videdit.video import rerender as rr
from videdit.video.rerender import RerenderConfig, keyframes_in

REPO = Path(__file__).resolve().parents[2]
BASE = dict(source_prompt="a", target_prompt="a red square", guidance=3.0, inversion="sdedit")


def run(model, frames, steps=10, strength=1.0, **options):
    """Translate the keyframes of ``frames`` (one window; the frames between are left to
    ``finish_clip``); -> (the keyframes' decoded frames, the rerender module)."""
    settings = EditSettings(**BASE, steps=steps, strength=strength, temporal={"rerender": {"interval": 5, **options}})
    stack = settings.temporal_stack()
    decoded = edit_frames(model, frames, settings, temporal=stack, last=True)
    return decoded, stack.modules[0]


@pytest.fixture(scope="module")
def static():
    """One toy frame repeated 7 times: zero flow, nothing occluded."""
    return np.repeat(sample_clip(0, "translate", 2).frames[:1], 7, axis=0)


@pytest.fixture(scope="module")
def moving():
    return sample_clip(0, "translate", 8).frames


def test_config_and_keyframes():
    assert RerenderConfig().warp_period == (0.0, 0.1) and RerenderConfig().mask_period == (0.5, 0.8)
    assert RerenderConfig().ada_period == (1.0, 1.0) and RerenderConfig().color_preserve is True
    assert RerenderConfig().propagate == "ebsynth" and RerenderConfig().ebsynth_config().search_vote_iters == 12
    for bad, message in [({"interval": 0}, "interval"), ({"warp_period": [0.2]}, r"\[start, end\]"),
                         ({"mask_strength": 2}, "mask_strength"), ({"shape_anchor": "mid"}, "shape_anchor"),
                         ({"propagate": "flow"}, "propagate"), ({"ebsynth": {"patch": 5}}, "ebsynth does not take")]:
        with pytest.raises(VideditError, match=message):
            RerenderConfig(**bad)
    # rerender.py: cid = i + 1 for i in range(0, frame_count - 1, interval), and the clip's first frame
    assert keyframes_in(Window(0, 25, last=True), 10) == [0, 1, 11, 21, 24]
    assert keyframes_in(Window(20, 20, last=False), 10) == [21, 31]
    assert keyframes_in(Window(0, 25, last=True), 10, last_keyframe=False) == [0, 1, 11, 21]
    marked = {d.option: d.value for d in TEMPORAL[rr.NAME].departures()}
    assert sorted(marked) == ["flow", "last_keyframe"] and marked["last_keyframe"] is False
    # periods as the official code tests them: the controller's with both bounds, the masks' without
    assert [i for i in range(20) if rr.in_period(i, 20, (0, 0.1))] == [0, 1, 2]
    assert [i for i in range(20) if rr.in_period(i, 20, (0.5, 0.8), inclusive=False)] == [11, 12, 13, 14, 15]
    assert [i for i in range(20) if rr.in_period(i, 20, (1.0, 1.0))] == []
    assert [i for i in range(20) if rr.in_period(i, 20, (0.8, 1.0))] == [16, 17, 18, 19]


def test_passes_and_unet_calls(tiny, static):
    """Frame 0 once, each later keyframe twice (direct, fused): keyframes 0, 1, 6 of 7 frames
    at 4 steps -> 5 loops, 20 UNet calls (guidance halves in one batch); 3 loops without pixel fusion."""
    calls = []
    handle = tiny.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        _, module = run(tiny, static, steps=4)
        passes = [(p.frame, p.kind) for p in module.passes]
        n_full = len(calls)
        calls.clear()
        _, lean = run(tiny, static, steps=4, pixel_fusion=False)
    finally:
        handle.remove()
    assert passes == [(0, "first"), (1, "direct"), (1, "fused"), (6, "direct"), (6, "fused")]
    assert n_full == 20 and len(calls) == 12
    assert sorted(module.results) == [0, 1, 6]


def test_cross_frame_attention_to_first_and_previous(tiny, static, monkeypatch):
    """Keyframe 1 attends to frames 0 and 0, keyframe 6 to 0 and 1 (the previous keyframe's fused
    pass), at every step, on the decoder's self-attention only; frame 0 to itself."""
    read: dict[int, set] = {}

    class Spy(rr.AnchorStore):
        def get(self, layer, frame, like):
            read.setdefault(tuple(self.window)[0], set()).add((layer.split(".")[0], frame, self._call[layer][0]))
            return super().get(layer, frame, like)

    monkeypatch.setattr(rr, "AnchorStore", Spy)
    run(tiny, static, steps=4)
    assert 0 not in read   # frame 0 attends to itself, in its own batch
    for key, anchors in [(1, {0}), (6, {0, 1})]:
        assert {f for _, f, _ in read[key]} == anchors
        assert {b for b, _, _ in read[key]} == {"up_blocks"}
        assert {s for _, _, s in read[key]} == set(range(4))


def test_previous_keys_follow_style_update_freq(tiny, monkeypatch):
    """Only keyframes 1 + k style_update_freq hand their keys and values on (rerender.py's
    'updatestyle'): at interval 5 and the default freq 10, keyframe 11 still attends to 1; at
    freq 5 to 6. Pixel-aware fusion reads the latest keyframe either way."""
    read: dict[int, set] = {}

    class Spy(rr.AnchorStore):
        def get(self, layer, frame, like):
            read.setdefault(tuple(self.window)[0], set()).add(frame)
            return super().get(layer, frame, like)

    monkeypatch.setattr(rr, "AnchorStore", Spy)
    frames = np.repeat(sample_clip(0, "translate", 2).frames[:1], 12, axis=0)
    _, module = run(tiny, frames, steps=2, pixel_fusion=False)
    assert read[6] == {0, 1} and read[11] == {0, 1} and module.previous["frame"] == 11 and module.style_frame == 11
    read.clear()
    run(tiny, frames, steps=2, pixel_fusion=False, style_update_freq=5)
    assert read[11] == {0, 6}


def test_shape_aware_fusion_replaces_x0(tiny, moving, monkeypatch):
    """warp_period (0, 0.1) of 10 steps: steps 0 and 1; there x0 IS the first frame's warped
    (here along a zero flow with nothing occluded), not a blend with the predicted one."""
    def still(self, a, b, source_a, source_b, like):
        h, w = source_b.shape[:2]
        return like.new_zeros(1, 2, h, w), like.new_zeros(1, 1, h, w)

    monkeypatch.setattr(rr.Rerender, "pair", still)
    _, module = run(tiny, moving, pixel_fusion=False)
    first = module.first["x0"]
    for p in module.passes[1:]:
        assert p.shape_steps == [0, 1] and sorted(p.changed) == [0, 1]
        for i in (0, 1):
            assert (p.changed[i] - first[i].cpu()).abs().max() < 1e-5
            assert (p.x0[i] - first[i]).abs().max() > 0.05      # what the model predicted
        assert (p.x0[2] - first[2]).abs().max() > 0.05          # step 2 is its own


def test_shape_mask_leaves_out_cells_near_occlusions():
    """One occluded pixel: dilated 9x9 and blurred, every latent cell within 8 pixels is left out (max pool)."""
    occ = torch.zeros(1, 1, 64, 64)
    occ[..., 20, 20] = 1
    mask = 1 - torch.nn.functional.max_pool2d(rr.soften(occ), kernel_size=8)    # (1, 1, 8, 8)
    out = (mask[0, 0] < 1).nonzero().tolist()
    assert {tuple(c) for c in out} == {(i, j) for i in (1, 2, 3) for j in (1, 2, 3)}
    assert mask[0, 0, 2, 2] == 0 and mask[0, 0, 5, 5] == 1


def test_nearest_warp_moves_whole_cells():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    flow = torch.zeros(1, 2, 4, 4)
    flow[:, 0] = 1.4                                  # sample one to the right (nearest: 1)
    out = rr.flow_warp(x, flow, mode="nearest")
    assert out[0, 0, 0].tolist() == [1.0, 2.0, 3.0, 0.0]   # zeros past the border


def test_adain_to_the_first_frame(tiny, moving):
    """ada_period [0.8, 1] (the example configs') of 10 steps: steps 8 and 9, where x0 has the
    first frame's per-channel mean and std (the std unbiased there, biased after
    F.instance_norm, as in the controller: a factor sqrt(n / (n - 1)) apart); the default
    (1, 1): no step."""
    _, module = run(tiny, moving, ada_period=[0.8, 1.0], warp_period=[1.0, 1.0], pixel_fusion=False)
    for p in module.passes[1:]:
        assert p.ada_steps == [8, 9] and p.shape_steps == []
        for i in (8, 9):
            mean, std = module.first_stats[i]
            got_mean, got_std = rr.mean_std(p.changed[i])
            n = p.changed[i][0, 0].numel()
            assert torch.allclose(got_mean, mean.cpu(), atol=1e-4)
            assert torch.allclose(got_std, std.cpu() * (n / (n - 1)) ** 0.5, rtol=1e-3)
            assert (rr.mean_std(p.x0[i])[1] - std.cpu()).abs().max() > 0.05   # before AdaIN
    _, default = run(tiny, moving[:3], steps=5, pixel_fusion=False)
    assert all(p.ada_steps == [] for p in default.passes)


def test_same_seeded_noise_for_every_keyframe(tiny, moving):
    """sdedit: one noise, the same for every frame, from the seed (pure_noise: the start is that noise)."""
    from videdit.pipeline import invert_frames

    settings = EditSettings(**BASE, steps=10, strength=0.7)
    inv = invert_frames(tiny, moving[:3], settings)
    z0, s = inv.source, settings.schedule(tiny.scheduler_config)
    a = float(s.alphas[3])
    noise = (inv.trajectory[3] - a ** 0.5 * z0) / (1 - a) ** 0.5
    assert inv.start_step == 3 and (noise[1:] - noise[0]).abs().max() < 1e-4
    assert (inv.noise[0] - inv.noise[1]).abs().max() > 0.1          # the frames themselves differ
    pure = invert_frames(tiny, moving[:3], EditSettings(**BASE, steps=10, inversion_params={"pure_noise": True}))
    assert (pure.noise - pure.noise[0]).abs().max() == 0 and (pure.noise[0] - noise[0]).abs().max() < 1e-5
    other = invert_frames(tiny, moving[:1],
                          EditSettings(**BASE, steps=10, seed=1, inversion_params={"pure_noise": True}))
    assert (other.noise[0] - pure.noise[0]).abs().mean() > 0.5


def test_colour_correction(tiny, moving):
    """Lab histograms of the first output, the frame's own lightness; official default off (color_preserve)."""
    frame = np.random.default_rng(0).integers(60, 200, (32, 32, 3), dtype=np.uint8)
    first = np.clip(frame * np.array([1.1, 0.8, 0.6]) + [20, 10, 0], 0, 255).astype(np.uint8)   # warmer
    out = rr.colour_correct(frame, first)
    lab = [rr.cv2.cvtColor(x, rr.cv2.COLOR_RGB2LAB).astype(float) for x in (frame, first, out)]
    for c in (1, 2):
        before, after = (abs(lab[k][..., c].mean() - lab[1][..., c].mean()) for k in (0, 2))
        assert after < 0.3 * before and before > 3
    assert np.abs(lab[2][..., 0] - lab[0][..., 0]).mean() < 2
    _, kept = run(tiny, moving[:3], steps=4, pixel_fusion=False)
    _, corrected = run(tiny, moving[:3], steps=4, pixel_fusion=False, color_preserve=False)
    assert np.array_equal(kept.results[0], corrected.results[0])
    assert np.abs(kept.results[1].astype(int) - corrected.results[1]).mean() > 1


def test_pixel_aware_fusion(tiny, static, moving):
    """The fused pass pulls the latent in the steps strictly inside (0.5 N, 0.8 N) (10 steps: 6
    and 7; 4 steps: 3) towards the VAE-compensated encoding of the warped first/previous results
    (x + (x - E(D(x))) where that does not overshoot); mask_strength 0 leaves it the direct
    pass; the mask leaves out what both anchors miss."""
    _, module = run(tiny, static)
    fused = [p for p in module.passes if p.kind == "fused"]
    assert [p.fused_steps for p in fused] == [[6, 7], [6, 7]]
    assert all(p.fused_steps == [] for p in module.passes if p.kind != "fused")
    f = fused[0].fusion                      # static clip: the blend is the first result, seen everywhere
    assert f.mask.min() == 1 and f.flat.min() == 1
    x = rr._pixels(module.first["result"], f.xtrg)
    z = rr._vae_encode(tiny, x)
    z_rec = rr._vae_encode(tiny, rr._vae_decode(tiny, z))
    over = (rr._vae_decode(tiny, 2 * z - z_rec) - x).abs().mean(1, keepdim=True) > 0.25
    keep = 1 - torch.nn.functional.max_pool2d(
        (torch.nn.functional.interpolate(over.float(), scale_factor=1 / 8, mode="bilinear") > 0).float(), 3, 1, 1)
    assert torch.allclose(f.xtrg, z + keep * (z - z_rec), atol=1e-4)
    _, off = run(tiny, moving[:3], steps=4, mask_strength=0.0)
    _, direct = run(tiny, moving[:3], steps=4, pixel_fusion=False)
    _, on = run(tiny, moving[:3], steps=4)
    assert [p.fused_steps for p in on.passes if p.kind == "fused"] == [[3], [3]]
    assert np.array_equal(off.results[2], direct.results[2])
    assert np.abs(on.results[2].astype(int) - direct.results[2]).mean() > 1
    holes = [p.fusion.mask for p in on.passes if p.kind == "fused"]
    assert all(0 < float(m.mean()) < 1 for m in holes)     # the moving square uncovers cells


FAST_EBSYNTH = {"search_vote_iters": 1, "patchmatch_iters": 1}


def _between_clips():
    clips = [sample_clip(0, "translate", 12).frames]
    wolf = SHARED_DATA / "videos" / "wolf.mp4"
    if wolf.exists():
        clips.append(io.read_clip(wolf, io.ReadOptions(size=(64, 64), max_frames=12))[0])
    return clips


def test_frames_between_come_from_the_keyframes():
    """propagate="warp": with the source frames as keyframe results, the frames between must
    come back as the source (warped from both keyframes, per-pixel choice, histogram and
    gradient blend): mean error per frame < 6 levels, on average under 3/4 of copying the
    nearest keyframe's (toy: 2.3 against 3.3; wolf: 4.2 against 6.3; without the gradient blend
    2.4 and 4.0)."""
    for clip in _between_clips():
        module = rr.Rerender(RerenderConfig(interval=5, propagate="warp"))
        for k in (0, 1, 6, 11):
            module.results[k], module.sources[k] = clip[k], clip[k]
        out = module.finish_clip(Window(0, 12, clip, last=True))
        err = np.array([np.abs(out[g].astype(float) - clip[g]).mean() for g in range(12)])
        copy = np.array([np.abs(clip[min((0, 1, 6, 11), key=lambda k: abs(k - g))].astype(float) - clip[g]).mean()
                         for g in range(12)])
        assert err[[0, 1, 6, 11]].max() == 0
        between = [2, 3, 4, 5, 7, 8, 9, 10]
        assert err[between].max() < 6 and err[between].mean() < 0.75 * copy[between].mean()


@pytest.mark.slow
@pytest.mark.parametrize("name, ebsynth, bound", [("toy", FAST_EBSYNTH, 0.75), ("toy", {}, 0.6), ("wolf", {}, 1.0)])
def test_ebsynth_frames_between_come_from_the_keyframes(name, ebsynth, bound):
    """The Ebsynth stage (the default) on the same keyframes: its frames between come back
    closer to the source than the flow-warp stage's. Toy: 1.6 levels with one search-vote and
    one PatchMatch iteration, 1.0 with the official 12 and 6, against 2.3 for the warp; wolf
    (64x64): 4.0 with the official iterations against 4.2 (11.5 with one and one: the parallel
    sweeps need the official iterations to converge on real texture)."""
    clips = _between_clips()
    if name == "wolf" and len(clips) < 2:
        pytest.skip("wolf.mp4 is not in the shared data")
    clip = clips[0 if name == "toy" else 1]
    errs = {}
    for propagate in ("warp", "ebsynth"):
        module = rr.Rerender(RerenderConfig(interval=5, propagate=propagate, ebsynth=ebsynth))
        for k in (0, 1, 6, 11):
            module.results[k], module.sources[k] = clip[k], clip[k]
        out = module.finish_clip(Window(0, 12, clip, last=True))
        errs[propagate] = np.array([np.abs(out[g].astype(float) - clip[g]).mean() for g in range(12)])
    between = [2, 3, 4, 5, 7, 8, 9, 10]
    assert errs["ebsynth"][[0, 1, 6, 11]].max() == 0 and module.syntheses == 16
    assert errs["ebsynth"][between].mean() < bound * errs["warp"][between].mean(), errs


def test_frames_between_are_ebsynth_chains(monkeypatch):
    """The preset's frames between keyframes come from the Ebsynth stage: two chains per span
    (the earlier keyframe forward, frame by frame, and the later one backward), one synthesis per
    frame and chain, each from its keyframe's exemplar; a frame shows the synthesis the
    error-based selection picks (here the later keyframe's: equal errors, video_blend.py's
    g_error_mask picks the second; the earlier one's at its side)."""
    clip = sample_clip(0, "translate", 12).frames
    colours = {0: (200, 40, 40), 1: (200, 40, 40), 6: (40, 200, 40), 11: (40, 40, 200)}
    calls = []
    step = rr.Rerender._chain_step

    def spy(self, chain, g, source):
        calls.append((chain.key, g))
        return step(self, chain, g, source)

    def fake(self, guides):   # the exemplar's style (the keyframe's result) with no error
        return self.style.permute(1, 2, 0).byte().numpy(), np.zeros(guides[0].shape[:2], np.float32)

    monkeypatch.setattr(rr.Rerender, "_chain_step", spy)
    monkeypatch.setattr(rr.Exemplar, "synthesize", fake)
    module = rr.Rerender(RerenderConfig(interval=5, gradient_blend=False))
    assert module.config.propagate == "ebsynth"
    for k, colour in colours.items():
        module.results[k], module.sources[k] = np.full_like(clip[k], colour), clip[k]
    out = module.finish_clip(Window(0, 12, clip, last=True))
    assert module.syntheses == 16 and sorted(calls) == sorted([(1, g) for g in range(2, 6)] + [(6, g) for g in range(
        2, 6)] + [(6, g) for g in range(7, 11)] + [(11, g) for g in range(7, 11)])
    assert [g for k, g in calls if k == 1] == [2, 3, 4, 5] and [g for k, g in calls if k == 11] == [10, 9, 8, 7]
    for g, k in [(2, 1), (3, 6), (5, 6), (7, 6), (8, 11), (10, 11)]:
        assert np.abs(out[g].astype(int) - colours[k]).max() <= 2, (g, k)


def test_poisson_fusion_solves_the_official_least_squares():
    """min w^2 |G u - g|^2 + |u - blend|^2 per Lab channel (the problem poisson_fusion.py hands
    to lsqr), solved exactly: against a dense solve on a 6x5 image; a blend whose gradients are
    already the chosen ones comes back unchanged."""
    rng = np.random.default_rng(0)
    h, w, weight = 6, 5, 2.5 ** 2
    rhs = rng.normal(size=(h, w))
    gx, gy = np.zeros((h * w, h * w)), np.zeros((h * w, h * w))
    for i in range(h):
        for j in range(w):
            if i < h - 1:
                gx[i * w + j, i * w + j], gx[i * w + j, (i + 1) * w + j] = 1, -1
            if j < w - 1:
                gy[i * w + j, i * w + j], gy[i * w + j, i * w + j + 1] = 1, -1
    dense = np.linalg.solve(np.eye(h * w) + weight * (gx.T @ gx + gy.T @ gy), rhs.ravel()).reshape(h, w)
    assert np.abs(rr._neumann_solve(rhs, weight) - dense).max() < 1e-10
    ramp = np.linspace(60, 180, 16)
    image = np.stack([ramp[:, None] + 0 * ramp, ramp[None, :] + 0 * ramp[:, None], 240 - ramp[:, None] + 0 * ramp],
                     axis=-1).astype(np.uint8)                # smooth: no gradient past the clip at 100
    same = rr.poisson_fusion(image, image, image, rng.random((16, 16)) > 0.5)
    lab = [rr.cv2.cvtColor(x, rr.cv2.COLOR_RGB2LAB).astype(int) for x in (same, image)]
    assert np.abs(lab[0] - lab[1]).max() <= 2 and np.abs(lab[0] - lab[1]).mean() < 1   # the official truncation


def test_windows_need_a_keyframe(tiny, moving):
    settings = EditSettings(**BASE, steps=4, temporal={"rerender": {"interval": 5}})
    stack = settings.temporal_stack()
    edit_frames(tiny, moving[:4], settings, temporal=stack, last=False)
    with pytest.raises(VideditError, match="holds no keyframe"):
        edit_frames(tiny, moving[4:5], settings, start=4, temporal=stack, last=False)


def test_preset_is_the_official_defaults(tmp_path, capsys, monkeypatch):
    """configs/rerender.yaml: the official values, an edge ControlNet on the keyframes as woman.json
    runs it (canny 50/100, strength 0.7; tiny-random's stands in offline). Through the CLI, 12 frames
    at 4 steps and strength 0.75 (3 steps run): keyframes 0, 1, 11 in 5 passes of 3 UNet calls,
    each with the ControlNet's residuals, the ControlNet seeing the keyframe's own edges at 50/100
    in both guidance halves at scale 0.7."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    from tests.video.test_text2video_zero import Calls
    from videdit.control import canny

    preset = yaml.safe_load((REPO / "configs/rerender.yaml").read_text())
    assert preset["steps"] == 20 and preset["guidance"] == 7.5 and preset["inversion"] == "sdedit"
    assert preset["control"] == ["canny=50,100"] and preset["controlnet"] == ["lllyasviel/sd-controlnet-canny=0.7"]
    options = preset["temporal"]["rerender"]
    config = RerenderConfig(**options)
    defaults = RerenderConfig()
    assert config == defaults and options["interval"] == 10 and options["propagate"] == "ebsynth"
    pull = yaml.safe_load((REPO / "configs/rerender-pull.yaml").read_text())
    assert "flow_propagation" in pull["temporal"] and "rerender" not in pull["temporal"]
    path = tmp_path / "clip.mp4"
    io.write_video(path, sample_clip(0, "translate", 12).frames, 8)
    out = tmp_path / "out.mp4"
    unet, net = Calls(monkeypatch, UNet2DConditionModel), Calls(monkeypatch, ControlNetModel)
    code = main([*map(str, ["edit", path, "-t", "a red square", "-o", out, "--config", REPO / "configs/rerender.yaml",
                            "--model", "tiny-random", "--controlnet", "tiny-random=0.7", "--steps", "4", "--no-cache",
                            "-q", "--size", "source",
                            "--temporal", "rerender:ebsynth={search_vote_iters: 1, patchmatch_iters: 1, levels: 1, "
                            "inpaint_radius: 3}"])])
    assert code == 0, capsys.readouterr().err
    assert len(io.read_clip(out)[0]) == 12
    assert len(unet.seen) == len(net.seen) == 15
    assert all(call["down_block_additional_residuals"] is not None and call["mid_block_additional_residual"]
               is not None for call in unet.seen)
    assert all(call["conditioning_scale"] == 0.7 for call in net.seen)
    frames = io.read_clip(path, io.ReadOptions(size="source"))[0]
    for i, k in enumerate([0, 1, 1, 11, 11]):     # each pass's keyframe, its 3 steps
        cond = net.seen[3 * i]["controlnet_cond"]                     # (2 halves, 3, H, W)
        edges = torch.from_numpy(canny(frames[k:k + 1], 50, 100)).permute(0, 3, 1, 2).float() / 255
        assert cond.shape[0] == 2 and torch.equal(cond[:1].float(), edges) and torch.equal(cond[1:], cond[:1])


@pytest.mark.parametrize("propagate", ["warp", "ebsynth"])
def test_windows_change_nothing(tiny, tmp_path, propagate):
    """Keyframes are sampled one at a time whatever the windows: a 14-frame clip in windows of 8
    (keyframes 0, 1, 6 | 11, 13) equals the clip in one window, within float rounding carried through
    the propagation (measured with 2 torch threads: flow warping mean 0.017 of a level at most per
    frame, 4 levels at a few pixels; Ebsynth, whose patch choices a rounding difference can flip,
    mean 0.13, 11 levels).
    The Ebsynth chain from keyframe 11 back to frame 7 crosses the windows: the first pass keeps its
    state at frame 8 for the second pass over the first window."""
    path = tmp_path / "clip.mp4"
    io.write_video(path, sample_clip(1, "translate", 14).frames, 8)
    options = {"interval": 5, "propagate": propagate, "ebsynth": {**FAST_EBSYNTH, "levels": 1, "inpaint_radius": 3}}
    kw = dict(**BASE, model=tiny, steps=3, strength=1.0, use_cache=False, read=io.ReadOptions(size="source"),
              temporal={"rerender": options})
    one, two = edit_video(path, window=14, **kw), edit_video(path, window=8, **kw)
    assert one.stats.windows == 1 and two.stats.windows == 2
    diff = np.abs(one.frames.astype(int) - two.frames)
    mean, most = (0.05, 8) if propagate == "warp" else (0.25, 16)
    assert diff.reshape(len(diff), -1).mean(1).max() <= mean and diff.max() <= most


def test_one_module_runs_the_passes():
    from videdit.video import TemporalStack

    assert TemporalStack([rr.Rerender(RerenderConfig())]).in_passes is not None
    assert TemporalStack([]).in_passes is None
    with pytest.raises(VideditError, match="each run the edit in passes; keep one"):
        TemporalStack([rr.Rerender(RerenderConfig()), rr.Rerender(RerenderConfig())]).in_passes


def test_the_fusions_code_pixels_in_the_vaes_own_dtype():
    """``--vae-dtype``: the pixel-aware fusion's encode and decode feed the VAE in its dtype (fp32
    here) under a bf16 UNet (they fed the UNet's dtype: a dtype mismatch in the first conv)."""
    from videdit.models import load_model

    model = load_model("tiny-random", dtype="bf16", vae_dtype="fp32")
    x = torch.zeros(1, 3, 64, 64)
    z = rr._vae_encode(model, x)
    assert z.shape == (1, 4, 8, 8) and z.dtype == torch.float32
    assert rr._vae_decode(model, z).shape == (1, 3, 64, 64)
