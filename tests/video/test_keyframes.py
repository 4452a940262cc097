"""Keyframes: selection numbers, TokenFlow's nearest-neighbour propagation on a hand-made case,
flow propagation's occlusion-aware blend, seams, windows, presets end to end on tiny-random."""

import dataclasses
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import videdit
from videdit import io
from videdit.attention import AttnCall
from videdit.cli import main
from videdit.core import CallInfo, StepContext, make_schedule
from videdit.editing import EDITORS, EditContext, get_editor
from videdit.errors import VideditError
from videdit.inversion import Inversion, make_config
from videdit.pipeline import EditSettings, edit_latents, invert_frames
from videdit.video import TemporalContext, get_temporal
from videdit.video.warp import warp
from videdit.video.keyframes import (SOURCE_BRANCH_EDITORS, KeyframesConfig, TokenFlowPropagation, frame_changes,
                                     nearest_tokens, neighbours, select_keyframes)

SOURCE, TARGET = "a wolf in a forest", "a robot wolf in a forest"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ATOL = 1e-4


@pytest.fixture(scope="module")
def clip(shared_data):
    frames, _ = io.read_clip(shared_data / "videos" / "wolf.mp4", io.ReadOptions(size=(64, 64), max_frames=8))
    return frames


def cut_clip(n=8, cut=5, size=16):
    """A gradient drifting one grey level a frame, then another picture from frame ``cut``."""
    ramp = np.linspace(0, 200, size, dtype=np.float32)[None, :, None].repeat(size, 0).repeat(3, 2)
    frames = np.stack([ramp + i for i in range(n)])
    frames[cut:] = 255 - frames[cut:]
    return frames.astype(np.uint8)


# --- choosing keyframes ------------------------------------------------------------------------

def test_every_k_spreads_keyframes_to_the_window_end():
    """At most `every` apart, evenly, and each window ends on a keyframe, so no frame is left
    without a keyframe after it (the next window would start from one of its own: a jump)."""
    assert select_keyframes(10, every=4) == [0, 3, 6, 9]
    assert select_keyframes(8, every=4) == [0, 4, 7]
    assert select_keyframes(8, every=4, offset=8, last_keyframe=7) == [11, 15]
    assert select_keyframes(16, every=4, offset=16, last_keyframe=15) == [19, 23, 27, 31]
    assert select_keyframes(3, every=4, offset=5, last_keyframe=4) == [7]   # a short window: its last frame
    assert select_keyframes(1, every=4) == [0]
    for n, every in [(7, 2), (16, 5), (9, 1)]:
        keys = select_keyframes(n, every=every)
        assert keys[0] == 0 and keys[-1] == n - 1 and max(np.diff(keys)) <= every


def test_frame_changes_are_mean_absolute_differences():
    frames = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (10, 13, 13, 3)])
    d = frame_changes(frames)
    assert np.isnan(d[0]) and d[1:].tolist() == [3, 0, 10]
    assert frame_changes(frames, previous=np.full((4, 4, 3), 0, np.uint8))[0] == 10


def test_change_finds_the_cut():
    frames = cut_clip()
    d = frame_changes(frames)
    assert d[5] > 50 and np.nanmax(np.delete(d, 5)) == 1
    assert select_keyframes(8, every=100, select="change", frames=frames, quantile=0.8) == [0, 5, 7]   # 7: the end
    # at most `every` apart
    assert select_keyframes(8, every=3, select="change", frames=frames, quantile=0.8) == [0, 3, 5, 7]
    # a window starting at the cut sees it through the frame before it
    assert select_keyframes(3, every=100, select="change", frames=frames[5:], quantile=0.8, offset=5,
                            previous=frames[4], last_keyframe=0) == [5, 7]
    still = np.repeat(frames[:1], 6, axis=0)
    assert select_keyframes(6, every=100, select="change", frames=still, quantile=0.5) == [0, 5]
    with pytest.raises(VideditError, match="needs the window's 8 source frames"):
        select_keyframes(8, every=4, select="change")


def test_neighbours_blend_by_temporal_distance():
    assert neighbours(5, [0, 4, 8]) == ((4, 0.75), (8, 0.25))
    assert neighbours(9, [0, 4, 8]) == ((8, 1.0),)
    assert neighbours(2, []) == ()


# --- TokenFlow ---------------------------------------------------------------------------------

def test_nearest_tokens_use_cosine_similarity():
    gen = torch.Generator().manual_seed(0)
    keys = torch.eye(6)[torch.randperm(6, generator=gen)] * torch.rand(6, 1, generator=gen).add(0.5)
    perm = torch.randperm(6, generator=gen)
    feats = keys[perm] * 7.0 + 0.01 * torch.rand(6, 6, generator=gen)   # scaled, slightly perturbed rows
    assert torch.equal(nearest_tokens(feats, keys), perm)


def test_tokenflow_propagation_on_a_hand_made_case():
    """Window of 5 frames, keyframes 0 and 4, one head, T = 4 tokens, two branches (0 = source).
    Frame 1's source tokens are keyframe 0's in order p, frame 3's keyframe 4's in order r;
    each must take 3/4 of its nearer keyframe's outputs at those tokens and 1/4 of the other's
    at the matching tokens, in the edit branch only."""
    layer, T = "up_blocks.2.attentions.0.transformer_blocks.0.attn1.processor", 4
    tf = TokenFlowPropagation([layer], [0, 4], [0, 4], range(0, 5), source=0, persistent={})
    info = CallInfo(n_branches=2, guided=False, latent_size=(2, 2))
    call = AttnCall(layer=layer, cross=False, info=info, heads=1, tokens=T)
    eye = torch.eye(T)
    kf_feats = torch.stack([eye, eye[[2, 0, 3, 1]]])               # (2 keyframes, T, d): tokens e_s, e_q(s)
    kf_out = torch.randn(2, 2, T, 3)                                # (nb, keyframes, T, C)

    def run(frames, feats, out):
        info.frames, info.batch = frames, 0 if frames == (0, 4) else 1
        k = torch.stack([feats, feats]).flatten(0, 1)[:, None]      # (nb * fb, 1 head, T, d)
        tf.qkv(call, None, k, k)
        return tf.output(call, out.flatten(0, 1)).view_as(out)

    kept = run((0, 4), kf_feats, kf_out)
    assert torch.equal(kept, kf_out)                                # keyframes are left alone
    p, r = torch.tensor([3, 1, 0, 2]), torch.tensor([1, 2, 0, 3])
    feats = torch.stack([eye[p], eye[[2, 0, 3, 1]][r]])             # frames 1 and 3
    mine = torch.randn(2, 2, T, 3)
    got = run((1, 3), feats, mine)
    q = torch.tensor([2, 0, 3, 1])                                  # keyframe 4's token s is e_q(s)
    qinv = torch.argsort(q)
    torch.testing.assert_close(got[1, 0], 0.75 * kf_out[1, 0, p] + 0.25 * kf_out[1, 1, qinv[p]])
    torch.testing.assert_close(got[1, 1], 0.25 * kf_out[1, 0, q[r]] + 0.75 * kf_out[1, 1, r])
    assert torch.equal(got[0], mine[0])                             # the source branch keeps its own


@pytest.mark.parametrize("editor", sorted(EDITORS))
def test_source_branch_editors_are_listed(tiny, clip, editor):
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2, editor=editor)
    inv = invert_frames(tiny, clip[:1], s)
    src, tgt, unc = tiny.encode_text([SOURCE, TARGET, ""]).chunk(3)
    ctx = EditContext(model=tiny, inversion=inv, schedule=make_schedule(tiny.scheduler_config, 2), source_cond=src,
                      target_cond=tgt, uncond=unc, guidance=7.5, source_prompt=SOURCE, target_prompt=TARGET)
    spec = get_editor(editor)
    plan = spec.plan(ctx, make_config(spec.config, {}, editor))
    assert (plan.source_branch is not None) == (editor in SOURCE_BRANCH_EDITORS)


def test_tokenflow_needs_a_source_branch(tiny, clip):
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2, temporal={"keyframes": {}})
    with pytest.raises(VideditError, match="prompt_to_prompt.*or propagation 'flow'"):
        edit_latents(tiny, invert_frames(tiny, clip[:2], s), s)


@pytest.mark.parametrize("propagation", ["tokenflow", "flow"])
def test_batch_size_does_not_change_the_edit(tiny, clip, propagation):
    """Keyframes run first, together; the frames between read them from the store."""
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, editor="prompt_to_prompt",
                     temporal={"keyframes": {"every": 3, "propagation": propagation}})
    inv = invert_frames(tiny, clip, s)
    one, eight = (edit_latents(tiny, inv, dataclasses.replace(s, batch_size=b), frames=clip) for b in (1, 8))
    torch.testing.assert_close(one, eight, rtol=0, atol=ATOL)
    alone = edit_latents(tiny, inv, dataclasses.replace(s, temporal={}))
    changed = (eight - alone).flatten(1).norm(dim=1) / alone.flatten(1).norm(dim=1)   # per frame
    assert (changed > 0.01).all()


def test_keyframes_run_first_and_windows_carry_the_last_one(tiny, clip):
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2, editor="prompt_to_prompt",
                     batch_size=2, temporal={"keyframes": {"every": 3}})
    state, leads = {}, []
    for i in (0, 4):
        inv = invert_frames(tiny, clip[i:i + 4], s)
        z = edit_latents(tiny, inv, s, frame_offset=i, frames=clip[i:i + 4], clip_state=state)
        assert z.shape == (4, 4, 8, 8) and torch.isfinite(z).all()
        kept = {key[-1] for part in ("anchors", "tokenflow") for key in state["keyframes"][part]}
        leads.append((state["keyframes"]["last_keyframe"], sorted(kept)))
    assert leads == [(3, [3]), (7, [3, 7])]   # window 2 attends to 3 (window 1's last keyframe) and keeps 7


@pytest.mark.parametrize("propagation", ["tokenflow", "flow"])
def test_the_last_window_carries_no_keyframe(tiny, clip, propagation):
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2, editor="prompt_to_prompt",
                     batch_size=2, temporal={"keyframes": {"every": 3, "propagation": propagation}})
    inv = invert_frames(tiny, clip[:4], s)
    carried, final = {}, {}
    a = edit_latents(tiny, inv, s, frames=clip[:4], clip_state=carried)
    b = edit_latents(tiny, inv, s, frames=clip[:4], clip_state=final, final_window=True)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    kept = lambda state: {key[-1] for part in ("anchors", "tokenflow") for key in state["keyframes"].get(part, {})}  # noqa: E731
    assert kept(carried) == {3} and kept(final) == set()


def test_change_selection_sets_the_lead_frames(tiny):
    frames = np.repeat(np.repeat(cut_clip(8, 5, 16), 4, axis=1), 4, axis=2)   # (8, 64, 64, 3)
    inv = Inversion(method="ddim", trajectory=torch.zeros(3, 8, 4, 8, 8))
    ctx = TemporalContext(model=tiny, inversion=inv, schedule=make_schedule(tiny.scheduler_config, 2), info=CallInfo(),
                          n_branches=2, output_branch=1, source_branch=0, frames=frames)
    spec = get_temporal("keyframes")
    plan = spec.build(ctx, KeyframesConfig(select="change", every=100))
    assert plan.lead_frames == (0, 5, 7)


# --- flow --------------------------------------------------------------------------------------

def flow_callback(tiny, frames, every):
    n = len(frames)
    inv = Inversion(method="ddim", trajectory=torch.zeros(3, n, 4, 8, 8))
    ctx = TemporalContext(model=tiny, inversion=inv, schedule=make_schedule(tiny.scheduler_config, 2), info=CallInfo(),
                          n_branches=1, output_branch=0, source_branch=None, frames=frames)
    return get_temporal("keyframes").build(ctx, KeyframesConfig(every=every, propagation="flow")).callbacks[0]


def texture(shape, lo, hi, seed=0):
    import cv2

    noise = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    smooth = cv2.GaussianBlur(noise, (7, 7), 2).astype(np.float32)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (lo + (hi - lo) * smooth).astype(np.uint8)


LAST = dict(timestep=0, alpha=1.0, alpha_prev=1.0, n_steps=2)


def test_flow_blends_keyframes_where_they_see_and_keeps_the_frame_where_they_do_not(tiny):
    """On the latent grid, no VAE round trip: after the last step the latents themselves,
    before it the predicted clean latents (re-noised with the step's noise)."""
    base = texture((64, 64, 3), 150, 250)
    frames = np.repeat(base[None], 5, axis=0)
    frames[2] = base - 150                      # no keyframe sees it (photometric occlusion everywhere)
    cb = flow_callback(tiny, frames, every=4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 5, 4, 8, 8, generator=gen)
    out = cb.on_step_end(StepContext(step=1, **LAST), x)
    assert torch.equal(out[0, [0, 2, 4]], x[0, [0, 2, 4]])         # keyframes stay; occluded: its own latent
    torch.testing.assert_close(out[0, 1], 0.75 * x[0, 0] + 0.25 * x[0, 4])   # still: blend by distance
    torch.testing.assert_close(out[0, 3], 0.25 * x[0, 0] + 0.75 * x[0, 4])
    # an earlier step fuses x0 = (x - sqrt(1 - a) eps) / sqrt(a), eps the model's output
    step0 = StepContext(step=0, timestep=500, alpha=0.3, alpha_prev=0.5, n_steps=2)
    z, eps = (torch.randn(1, 5, 4, 8, 8, generator=gen) for _ in range(2))
    cb.on_noise(step0, z, eps)
    out = cb.on_step_end(step0, x)
    x0, new = ((v[0] - 0.5 ** 0.5 * eps[0]) / 0.5 ** 0.5 for v in (x, out))
    torch.testing.assert_close(new[[0, 2, 4]], x0[[0, 2, 4]])
    torch.testing.assert_close(new[1], 0.75 * x0[0] + 0.25 * x0[4])


def test_flow_warps_the_keyframes_onto_a_moving_frame(tiny):
    """A texture sliding 2 px left a frame, a quarter of a latent cell: frame 1's latent is
    (z0 warped by +1/4 cell + z2 warped by -1/4 cell) / 2, z0 and z2 the keyframes' latents."""
    base = texture((64, 96, 3), 0, 255, seed=1)
    frames = np.stack([base[:, 2 * i:2 * i + 64] for i in range(3)])  # frame1(x) = frame0(x + 2) = frame2(x - 2)
    cb = flow_callback(tiny, frames, every=2)
    x = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    made = cb.on_step_end(StepContext(step=1, **LAST), x)[0, 1]
    shift = torch.zeros(2, 8, 8, 2)
    shift[0, ..., 0], shift[1, ..., 0] = 0.25, -0.25
    want = 0.5 * warp(x[0, [0, 2]], shift).sum(0)
    inner = (slice(None), slice(1, -1), slice(1, -1))                  # away from the borders
    err = (made - want)[inner].abs().mean()
    assert err < 0.1 * (made - 0.5 * (x[0, 0] + x[0, 2]))[inner].abs().mean() and err < 0.02


def sliding_texture(n):
    """``n`` frames of a texture sliding 2 px left a frame: frame g(x) = frame a(x + 2 (g - a))."""
    base = texture((64, 96, 3), 0, 255, seed=1)
    return np.stack([base[:, 2 * i:2 * i + 64] for i in range(n)])


def slid(image, by):
    """``image`` brought ``by`` frames of the sliding texture later: g(x) = a(x + 2 (g - a))."""
    shift = np.zeros((*image.shape[:2], 2), np.float32)
    shift[..., 0] = 2 * by
    return warp(image.astype(np.float32), shift)


INNER = (slice(8, -8), slice(16, -16))                          # away from what slides in or out


def test_pixels_make_the_frames_between_from_the_edited_keyframes(tiny):
    """With pixels=True each frame between keyframes 0, 3 and 5 is their decoded edits brought
    onto it along the flow (2 px per frame of distance) and blended by temporal distance.
    Without it, the frames between are their own edits, far from that."""
    from videdit.pipeline import edit_frames

    frames = sliding_texture(6)
    keys = select_keyframes(6, every=4)
    assert keys == [0, 3, 5]
    temporal = {"keyframes": {"every": 4, "propagation": "flow", "pixels": True}}
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, guidance=7.5, temporal=temporal)

    def expected(out, g):
        return sum(w * slid(out[a], g - a) for a, w in neighbours(g, keys))

    out = edit_frames(tiny, frames, s)
    errs = [np.abs(out[g].astype(np.float32) - expected(out, g))[INNER].mean() for g in (1, 2, 4)]
    own = edit_frames(tiny, frames, dataclasses.replace(s, temporal={"keyframes": {"every": 4, "propagation": "flow"}}))
    own_errs = [np.abs(own[g].astype(np.float32) - expected(own, g))[INNER].mean() for g in (1, 2, 4)]
    assert max(errs) < 0.5 and min(own_errs) > 20 * max(errs), (errs, own_errs)   # measured 0.25 and 32-35
    assert np.array_equal(out[keys], own[keys])           # keyframes are left as decoded


def test_guided_fit_recovers_a_colour_map_and_follows_the_guide():
    from videdit.video import guided

    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    M, b = np.array([[0.5, 0.2, 0], [0, 1, 0], [0.1, 0, 0.7]]), 0.1
    edit = np.rint(np.clip(src / 255 @ M.T + b, 0, 1) * 255).astype(np.uint8)
    t = guided.fit(src, edit, radius=2, eps=1e-4)
    assert np.abs(guided.apply(t, src).astype(int) - edit).mean() < 1 and np.abs(t.A - M).max() < 0.1
    # a green disc on white recoloured blue, with the edit's outline a pixel too wide: the
    # guided result takes the blue and keeps the guide's outline
    yy, xx = np.mgrid[:32, :32]
    r2 = (yy - 16) ** 2 + (xx - 16) ** 2
    disc, wide, far = r2 < 64, r2 < 81, r2 > (8 + 2 * 4 + 1) ** 2       # far: no window reaches the disc
    src = np.where(disc[..., None], [30, 160, 50], [240, 240, 240]).astype(np.uint8)
    edit = np.where(wide[..., None], [30, 50, 200], [240, 240, 240]).astype(np.uint8)
    out = guided.apply(guided.fit(src, edit, radius=4, eps=1e-3), src).astype(int)
    assert np.abs(out[disc] - [30, 50, 200]).mean() < 2 and np.abs(out[far] - 240).mean() < 1
    ring = wide & ~disc                                         # the edit's extra pixel: mostly background again
    assert np.abs(out[ring] - 240).mean() < 0.35 * np.abs(edit[ring].astype(int) - 240).mean()   # measured 0.26
    with pytest.raises(VideditError, match="radius >= 1 and eps > 0"):
        guided.fit(src, edit, radius=0, eps=1e-3)


def test_guided_pixels_carry_the_keyframes_colour_maps(tiny):
    """pixels='guided': every frame is its own source frame under a colour map; between
    keyframes the maps are the keyframes' brought along the flow. So a frame between equals
    its source under the map warped from the keyframes, computed here by hand."""
    from videdit.pipeline import edit_frames
    from videdit.video import guided

    frames = sliding_texture(6)
    keys = select_keyframes(6, every=4)
    temporal = {"keyframes": {"every": 4, "propagation": "flow", "pixels": "guided", "guided_radius": 3}}
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, guidance=7.5, temporal=temporal)
    out = edit_frames(tiny, frames, s)
    plain = edit_frames(tiny, frames, dataclasses.replace(s, temporal={"keyframes": {"every": 4, "propagation": "flow"}}))
    maps = {a: guided.fit(frames[a], plain[a], 3, 1e-3) for a in keys}
    for a in keys:                                              # keyframes: their source under their own map
        assert np.array_equal(out[a], guided.apply(maps[a], frames[a]))
    for g in (1, 2, 4):
        stacked = sum(w * slid(maps[a].stacked(), g - a) for a, w in neighbours(g, keys))
        want = guided.apply(guided.ColourTransform.unstack(stacked), frames[g]).astype(np.float32)
        err = np.abs(out[g] - want)[INNER].mean()
        assert err < 1.0, (g, err)
    # tiny-random's edit is no colour map of the source: the result differs from the decoded edit
    assert np.abs(out.astype(np.float32) - plain).mean() > 5


def test_bilateral_pixels_window_scope(tiny):
    """pixels='bilateral', bilateral_scope='window': every frame of a window is its own source under one grid of colour
    maps fitted from the window's decoded keyframes, plus the earlier windows' at
    ``bilateral_memory`` times their weight; across a later window the maps go linearly from
    the earlier window's to its own. Computed here by hand over two windows."""
    from videdit.pipeline import edit_frames
    from videdit.video import bilateral

    frames = sliding_texture(10)
    kf = {"every": 4, "pixels": "bilateral", "bilateral_scope": "window", "bilateral_memory": 0.5}
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, guidance=7.5, temporal={"keyframes": kf})
    plain = dataclasses.replace(s, temporal={"keyframes": {"every": 4, "propagation": "flow"}})
    config = KeyframesConfig(**kf)
    shape = bilateral.grid_shape((64, 64), config.bilateral_cell, config.bilateral_bins)
    state, plain_state, grid, last = {}, {}, None, None
    for offset, final in ((0, False), (5, True)):
        window = frames[offset:offset + 5]
        out = edit_frames(tiny, window, s, frame_offset=offset, clip_state=state, final_window=final)
        decoded = edit_frames(tiny, window, plain, frame_offset=offset, clip_state=plain_state, final_window=final)
        keys = select_keyframes(5, every=4, offset=offset, last_keyframe=last)
        last = keys[-1]
        before = grid
        grid = before.scaled(0.5) if before is not None else bilateral.ColourGrid(shape, (64, 64))
        for g in keys:
            grid.add(frames[g], decoded[g - offset])
        maps = grid.solve()
        ramp = [maps] * 5 if before is None else [before.solve() + (i + 1) / 5 * (maps - before.solve())
                                                  for i in range(5)]
        want = np.stack([bilateral.apply(m, shape, f) for m, f in zip(ramp, window)])
        assert np.abs(out.astype(int) - want).max() <= 1, offset   # float sums in another order: a level at most
        assert np.abs(out.astype(np.float32) - decoded).mean() > 5       # tiny-random's edit is no colour map
    assert keys == [7, 9]


def test_bilateral_pixels_clip_scope_make_every_frame_in_a_second_pass(tiny, tmp_path):
    """pixels='bilateral' (scope 'clip', the default): one grid from all the clip's keyframes.
    ``edit_video`` edits every window's keyframes, then makes each frame as its source under
    that grid; the windows' own results (``edit_frames`` with a clip state) are the decoded
    keyframes, the same as where every frame is edited, and the source between them."""
    import cv2

    from videdit.pipeline import edit_frames
    from videdit.video import bilateral
    from videdit.video.registry import CLIP_FINISH

    frames = sliding_texture(10)
    for t, f in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{t:04d}.png"), f[..., ::-1])
    kf = {"every": 4, "pixels": "bilateral"}
    res = videdit.edit_video(tmp_path, source_prompt=SOURCE, target_prompt=TARGET, model=tiny, steps=3, guidance=7.5,
                             window=5, use_cache=False, temporal={"keyframes": kf})
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, guidance=7.5, temporal={"keyframes": kf})
    plain = dataclasses.replace(s, temporal={"keyframes": {"every": 4, "propagation": "flow"}})
    config, state, last = KeyframesConfig(**kf), {}, None
    grid = bilateral.ColourGrid(bilateral.grid_shape((64, 64), config.bilateral_cell, config.bilateral_bins), (64, 64))
    for offset, final in ((0, False), (5, True)):
        window = frames[offset:offset + 5]
        decoded = edit_frames(tiny, window, plain, frame_offset=offset, clip_state=state, final_window=final)
        keys = select_keyframes(5, every=4, offset=offset, last_keyframe=last)
        last = keys[-1]
        for g in keys:
            grid.add(frames[g], decoded[g - offset])
        own_state = {} if offset == 0 else own_state
        out = edit_frames(tiny, window, s, frame_offset=offset, clip_state=own_state, final_window=final)
        at = [g - offset for g in keys]
        others = [i for i in range(5) if i not in at]
        assert np.abs(out[at].astype(int) - decoded[at]).max() <= 1 and CLIP_FINISH in own_state
        assert np.array_equal(out[others], window[others])
    want = np.stack([bilateral.apply(grid.solve(), grid.shape, f) for f in frames])
    assert np.abs(res.frames.astype(int) - want).max() <= 1
    # one window: made at once, the same as the second pass would
    one = edit_frames(tiny, frames[:5], s)
    grid1 = bilateral.ColourGrid(grid.shape, (64, 64))
    plain1 = edit_frames(tiny, frames[:5], plain)
    for g in select_keyframes(5, every=4):
        grid1.add(frames[g], plain1[g])
    assert np.abs(one.astype(int) - np.stack([bilateral.apply(grid1.solve(), grid.shape, f) for f in frames[:5]])).max() <= 1


def frames_through(model, module, run) -> int:
    """How many frames (summed over calls) reach ``module``'s forward while ``run()`` runs."""
    seen = []

    def count(mod, args, kwargs):
        seen.append((args[0] if args else next(iter(kwargs.values()))).shape[0])

    handle = module.register_forward_pre_hook(count, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return sum(seen)


def test_bilateral_pixels_edit_only_the_keyframes(tiny):
    """With pixels='bilateral' the UNet and the VAE's encoder and decoder see the keyframes
    alone (0, 4 and 7 of 8 frames): 3/8 of what they see when every frame is edited. Where
    another temporal module needs every frame (flow_propagation), every frame is edited."""
    from videdit.pipeline import edit_frames

    frames = sliding_texture(8)
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, guidance=7.5, editor="prompt_to_prompt",
                     temporal={"keyframes": {"every": 4, "pixels": "bilateral"}})
    every = dataclasses.replace(s, temporal={"keyframes": {"every": 4, "propagation": "flow"}})
    both = dataclasses.replace(s, temporal={**s.temporal, "flow_propagation": {}})
    counts = {}
    for name, settings in (("keyframes", s), ("every", every), ("both", both)):
        run = lambda: edit_frames(tiny, frames, settings)   # noqa: E731
        counts[name] = [frames_through(tiny, m, run) for m in (tiny.unet, tiny.vae.encoder, tiny.vae.decoder)]
    assert counts["every"][1:] == [8, 8] and counts["keyframes"][1:] == [3, 3] and counts["both"][1:] == [8, 8]
    assert counts["keyframes"][0] * 8 == counts["every"][0] * 3 and counts["both"][0] == counts["every"][0]


def decoded_keyframes(tiny, frames, settings, keys):
    """The decoded edits of the keyframes ``keys`` of a one-window clip, as ``edit_frames`` returns
    them when a later window follows (with pixels='bilateral' the frames come in a second pass)."""
    from videdit.pipeline import edit_frames

    return edit_frames(tiny, frames, settings, clip_state={}, final_window=False)[keys]


@pytest.mark.parametrize("batch_size", [2, 8])
def test_bilateral_keyframes_more_than_a_batch(tiny, batch_size):
    """Keyframes at most 2 frames apart of 8 (0, 2, 4, 5, 7): more than a UNet batch of 2. They run
    first and together, in batches, and come out as where every frame is edited (within a level)."""
    frames = sliding_texture(8)
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, guidance=7.5, batch_size=batch_size,
                     temporal={"keyframes": {"every": 2, "pixels": "bilateral"}})
    every = dataclasses.replace(s, temporal={"keyframes": {"every": 2, "propagation": "flow"}})
    keys = select_keyframes(8, every=2)
    assert keys == [0, 2, 4, 5, 7]
    got, want = decoded_keyframes(tiny, frames, s, keys), decoded_keyframes(tiny, frames, every, keys)
    assert np.abs(got.astype(int) - want).max() <= 1


def test_bilateral_cuts_a_per_frame_mask_to_the_keyframes(tiny):
    """An editor option with one mask per window frame (blended, (8, 64, 64)) is cut to the
    keyframes the model edits: they come out as where every frame is edited with the whole mask."""
    frames = sliding_texture(8)
    mask = np.zeros((8, 64, 64), np.float32)
    for i in range(8):
        mask[i, :, 4 * i:4 * i + 32] = 1                     # a band moving right, a different mask each frame
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, guidance=7.5, editor="blended",
                     editor_params={"mask": mask}, temporal={"keyframes": {"every": 4, "pixels": "bilateral"}})
    every = dataclasses.replace(s, temporal={"keyframes": {"every": 4, "propagation": "flow"}})
    keys = select_keyframes(8, every=4)
    got, want = decoded_keyframes(tiny, frames, s, keys), decoded_keyframes(tiny, frames, every, keys)
    assert np.abs(got.astype(int) - want).max() <= 1
    one = dataclasses.replace(s, editor_params={"mask": mask[:1]})    # one mask for all: left whole
    assert np.abs(decoded_keyframes(tiny, frames, one, keys).astype(int) - got).max() > 5


@pytest.mark.parametrize("inversion, params", [("ddim", {}), ("ddpm", {}), ("ddpm", {"noise": "frame"})])
def test_bilateral_keyframes_come_from_the_cached_inversion_of_their_window(tiny, tmp_path, inversion, params):
    """An edit of every frame caches the window's inversion; a later pixels='bilateral' edit
    cuts its keyframes out of it (Inversion.select) instead of inverting them again, and edits
    them as it does without a cache (within a level). DDPM inversion with a noise draw per frame
    draws it for the batch, so its keyframes are inverted alone (a second cache entry): the same
    command then gives the same edit whatever the cache holds."""
    from videdit.inversion import InversionCache
    from videdit.pipeline import EditStats, edit_frames

    frames = sliding_texture(8)
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, guidance=7.5, inversion=inversion,
                     inversion_params=params, temporal={"keyframes": {"every": 4, "pixels": "bilateral"}})
    every = dataclasses.replace(s, temporal={"keyframes": {"every": 4, "propagation": "flow"}})
    cache = InversionCache(tmp_path)
    edit_frames(tiny, frames, every, cache=cache)
    before = set(tmp_path.iterdir())                      # the window's inversion and the flows
    stats = EditStats()
    cut = edit_frames(tiny, frames, s, cache=cache, stats=stats)
    alone = edit_frames(tiny, frames, s)
    new = set(tmp_path.iterdir()) - before
    if not params:
        assert stats.cache_hits == 1 and stats.inversion_unet_evals == 0 and not new
        assert np.abs(cut.astype(int) - alone).max() <= 1
    else:
        assert stats.cache_hits == 0 and len(new) == 1
        assert np.array_equal(cut, alone)


# --- end to end --------------------------------------------------------------------------------

def test_ballet_portrait_tokenflow_keeps_size_and_frames(shared_data):
    res = videdit.edit_video(shared_data / "videos" / "ballet-portrait.mp4", source_prompt="a dancer",
                             target_prompt="a golden sculpture of a dancer", model="tiny-random", steps=2,
                             use_cache=False, editor="prompt_to_prompt", read=io.ReadOptions(max_frames=10, size=64),
                             window=4, batch_size=3, temporal={"keyframes": {"every": 3}})
    assert res.frames.shape == (10, 512, 288, 3) and res.stats.windows == 3


def test_ballet_portrait_bilateral_pixels_write_the_second_pass(shared_data, tmp_path):
    """The grid is fitted at the model's size (64 wide here) and its frames go back to the clip's
    288x512: to an mp4 (frame count and fps kept) and the preview, the same frames as returned."""
    kw = dict(source_prompt="a dancer", target_prompt="a golden dancer", model="tiny-random", steps=2, use_cache=False,
              read=io.ReadOptions(max_frames=6, size=64), window=4,
              temporal={"keyframes": {"every": 2, "pixels": "bilateral"}})
    clip = shared_data / "videos" / "ballet-portrait.mp4"
    res = videdit.edit_video(clip, **kw)
    assert res.frames.shape == (6, 512, 288, 3) and res.stats.windows == 2
    folder = tmp_path / "frames"
    videdit.edit_video(clip, folder, preview=tmp_path / "p.gif", **kw)
    written = sorted(folder.glob("*.png"))
    assert len(written) == 6 and (tmp_path / "p.gif").stat().st_size > 0
    assert np.array_equal(io.read_clip(folder, io.ReadOptions())[0], res.frames)


@pytest.mark.parametrize("preset", ["tokenflow", "fatezero", "text2video-zero", "recolour"])
def test_presets_edit_the_ballet_portrait(tmp_path, shared_data, capsys, preset):
    out = tmp_path / "out.mp4"
    code = main(["edit", str(shared_data / "videos" / "ballet-portrait.mp4"), "-s", "a dancer", "-t",
                 "a golden dancer", "-o", str(out), "--config", str(CONFIGS / f"{preset}.yaml"), "--model",
                 "tiny-random", "--steps", "2", "--no-cache", "-q", "--size", "64", "--max-frames", "6",
                 "--window", "4"])
    _, err = capsys.readouterr()
    assert code == 0, err
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert (s.width, s.height, s.average_rate) == (288, 512, Fraction(8))
        assert sum(1 for _ in c.decode(s)) == 6


def test_options_are_checked():
    with pytest.raises(VideditError, match="select must be one of"):
        KeyframesConfig(select="random")
    with pytest.raises(VideditError, match="propagation must be one of"):
        KeyframesConfig(propagation="copy")
    with pytest.raises(VideditError, match="quantile must be in"):
        KeyframesConfig(quantile=2)
    with pytest.raises(VideditError, match="pixels must be one of"):
        KeyframesConfig(pixels="ebsynth")
    with pytest.raises(VideditError, match="guided_radius must be"):
        KeyframesConfig(pixels="guided", guided_radius=-1)
    with pytest.raises(VideditError, match="guided_eps must be in"):
        KeyframesConfig(pixels="guided", guided_eps=0)
    with pytest.raises(VideditError, match="flow options apply to propagation 'flow' or pixels true"):
        KeyframesConfig(flow={"method": "dis"})
    with pytest.raises(VideditError, match="flow options apply"):
        KeyframesConfig(pixels="bilateral", flow={"method": "dis"})     # the grid moves nothing along a flow
    with pytest.raises(VideditError, match="only the keyframes are edited: no propagation applies; drop propagation"):
        KeyframesConfig(pixels="bilateral", propagation="flow")
    assert KeyframesConfig().propagates == "tokenflow" and KeyframesConfig(pixels="bilateral").propagates is None
    assert dataclasses.replace(KeyframesConfig(every=2), pixels="bilateral").propagates is None
    for bad, message in (({"bilateral_cell": 0}, "bilateral_cell must be"), ({"bilateral_bins": 0}, "bilateral_bins"),
                         ({"bilateral_memory": 1.5}, "bilateral_memory must be"),
                         ({"bilateral_scope": "shot"}, "bilateral_scope must be one of"),
                         ({"bilateral_memory": 0.5}, "with 'clip' every keyframe")):
        with pytest.raises(VideditError, match=message):
            KeyframesConfig(pixels="bilateral", **bad)
    with pytest.raises(VideditError, match="keep_background does not combine with temporal module 'keyframes'"):
        EditSettings(temporal={"keyframes": {"pixels": "bilateral"}}, keep_background={"threshold": 0.3})
    assert EditSettings(temporal={"keyframes": {"pixels": "guided"}}, keep_background={"threshold": 0.3}).keep_background
    assert KeyframesConfig(pixels=True, flow={"preset": "fast"}).pixels
    with pytest.raises(VideditError, match="does not take"):
        KeyframesConfig(propagation="flow", flow={"speed": 1})
    assert KeyframesConfig(propagation="flow", flow={"preset": "fast"}).flow == {"preset": "fast"}
