"""pixels_bilateral: every frame its own source under one grid of colour maps fitted from the
keyframes (scope clip: in a second pass; scope window: at once), the keyframes alone edited,
cut from a cached inversion of their window."""

import dataclasses

import numpy as np
import pytest

import videdit
from videdit import io
from videdit.errors import VideditError
from videdit.inversion import InversionCache
from videdit.pipeline import EditSettings, EditStats, edit_frames
from videdit.video import bilateral
from videdit.video.keyframes import select_keyframes
from videdit.video.pixels_bilateral import PixelsBilateralConfig

from tests.video.clips import SOURCE, TARGET, frames_through, sliding_texture


BIL = {"keyframes": {"every": 4}, "pixels_bilateral": {}}
FLOW = {"keyframes": {"every": 4}, "keyframe_flow": {}}


def test_bilateral_pixels_window_scope(tiny):
    """scope 'window': every frame of a window is its own source under one grid of colour
    maps fitted from the window's decoded keyframes, plus the earlier windows' at
    ``memory`` times their weight; across a later window the maps go linearly from
    the earlier window's to its own. Computed here by hand over two windows."""
    frames = sliding_texture(10)
    temporal = {"keyframes": {"every": 4}, "pixels_bilateral": {"scope": "window", "memory": 0.5}}
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, guidance=7.5, temporal=temporal)
    plain = dataclasses.replace(s, temporal=FLOW)
    config = PixelsBilateralConfig()
    shape = bilateral.grid_shape((64, 64), config.cell, config.bins)
    stack, plain_stack, grid, last = s.temporal_stack(), plain.temporal_stack(), None, None
    for offset, final in ((0, False), (5, True)):
        window = frames[offset:offset + 5]
        out = edit_frames(tiny, window, s, start=offset, temporal=stack, last=final)
        decoded = edit_frames(tiny, window, plain, start=offset, temporal=plain_stack, last=final)
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
    """Scope 'clip' (the default): one grid from all the clip's keyframes.
    ``edit_video`` edits every window's keyframes, then makes each frame as its source under
    that grid; the windows' own results (``edit_frames`` with a temporal stack) are the decoded
    keyframes, the same as where every frame is edited, and the source between them."""
    import cv2

    frames = sliding_texture(10)
    for t, f in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{t:04d}.png"), f[..., ::-1])
    res = videdit.edit_video(tmp_path, source_prompt=SOURCE, target_prompt=TARGET, model=tiny, steps=3, guidance=7.5,
                             window=5, use_cache=False, temporal=BIL, read=io.ReadOptions(size="source"))
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, guidance=7.5, temporal=BIL)
    plain = dataclasses.replace(s, temporal=FLOW)
    config, plain_stack, own, last = PixelsBilateralConfig(), plain.temporal_stack(), s.temporal_stack(), None
    assert own.second_pass and not plain_stack.second_pass
    grid = bilateral.ColourGrid(bilateral.grid_shape((64, 64), config.cell, config.bins), (64, 64))
    for offset, final in ((0, False), (5, True)):
        window = frames[offset:offset + 5]
        decoded = edit_frames(tiny, window, plain, start=offset, temporal=plain_stack, last=final)
        keys = select_keyframes(5, every=4, offset=offset, last_keyframe=last)
        last = keys[-1]
        for g in keys:
            grid.add(frames[g], decoded[g - offset])
        out = edit_frames(tiny, window, s, start=offset, temporal=own, last=final)
        at = [g - offset for g in keys]
        others = [i for i in range(5) if i not in at]
        assert np.abs(out[at].astype(int) - decoded[at]).max() <= 1
        assert np.array_equal(out[others], window[others])
    want = np.stack([bilateral.apply(grid.solve(), grid.shape, f) for f in frames])
    assert np.abs(res.frames.astype(int) - want).max() <= 1
    # one window: made at once, the same as the second pass would
    one = edit_frames(tiny, frames[:5], s)
    grid1 = bilateral.ColourGrid(grid.shape, (64, 64))
    plain1 = edit_frames(tiny, frames[:5], plain)
    for g in select_keyframes(5, every=4):
        grid1.add(frames[g], plain1[g])
    want1 = np.stack([bilateral.apply(grid1.solve(), grid.shape, f) for f in frames[:5]])
    assert np.abs(one.astype(int) - want1).max() <= 1


def test_bilateral_pixels_edit_only_the_keyframes(tiny):
    """With pixels_bilateral the UNet and the VAE's encoder and decoder see the keyframes
    alone (0, 4 and 7 of 8 frames): 3/8 of what they see when every frame is edited. Where
    another temporal module needs every frame (flow_propagation), every frame is edited."""
    frames = sliding_texture(8)
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, guidance=7.5, editor="prompt_to_prompt",
                     temporal=BIL)
    every = dataclasses.replace(s, temporal=FLOW)
    both = dataclasses.replace(s, temporal={**s.temporal, "flow_propagation": {}})
    counts = {}
    for name, settings in (("keyframes", s), ("every", every), ("both", both)):
        run = lambda: edit_frames(tiny, frames, settings)   # noqa: E731
        counts[name] = frames_through(tiny, (tiny.unet, tiny.vae.encoder, tiny.vae.decoder), run)
    assert counts["every"][1:] == [8, 8] and counts["keyframes"][1:] == [3, 3] and counts["both"][1:] == [8, 8]
    assert counts["keyframes"][0] * 8 == counts["every"][0] * 3 and counts["both"][0] == counts["every"][0]


def decoded_keyframes(tiny, frames, settings, keys):
    """The decoded edits of the keyframes ``keys`` of a clip's first window, as ``edit_frames``
    returns them when a later window follows (pixels_bilateral makes the frames in a second pass)."""
    return edit_frames(tiny, frames, settings, temporal=settings.temporal_stack(), last=False)[keys]


@pytest.mark.parametrize("batch_size", [2, 8])
def test_bilateral_keyframes_more_than_a_batch(tiny, batch_size):
    """Keyframes at most 2 frames apart of 8 (0, 2, 4, 5, 7): more than a UNet batch of 2. They run
    first and together, in batches, and come out as where every frame is edited (within a level)."""
    frames = sliding_texture(8)
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, guidance=7.5, batch_size=batch_size,
                     temporal={"keyframes": {"every": 2}, "pixels_bilateral": {}})
    every = dataclasses.replace(s, temporal={"keyframes": {"every": 2}, "keyframe_flow": {}})
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
                     editor_params={"mask": mask}, temporal=BIL)
    every = dataclasses.replace(s, temporal=FLOW)
    keys = select_keyframes(8, every=4)
    got, want = decoded_keyframes(tiny, frames, s, keys), decoded_keyframes(tiny, frames, every, keys)
    assert np.abs(got.astype(int) - want).max() <= 1
    one = dataclasses.replace(s, editor_params={"mask": mask[:1]})    # one mask for all: left whole
    assert np.abs(decoded_keyframes(tiny, frames, one, keys).astype(int) - got).max() > 5


@pytest.mark.parametrize("inversion, params", [("ddim", {}), ("ddpm", {}), ("ddpm", {"noise": "frame"})])
def test_bilateral_keyframes_come_from_the_cached_inversion_of_their_window(tiny, tmp_path, inversion, params):
    """An edit of every frame caches the window's inversion; a later pixels_bilateral edit
    cuts its keyframes out of it (Inversion.select) instead of inverting them again, and edits
    them as it does without a cache (within a level). DDPM inversion with a noise draw per frame
    draws it for the batch, so its keyframes are inverted alone (a second cache entry): the same
    command then gives the same edit whatever the cache holds."""
    frames = np.ascontiguousarray(sliding_texture(8)[:, ::2, ::2])   # 32x32: the cache is what is tested
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, guidance=7.5, inversion=inversion,
                     inversion_params=params, temporal=BIL)
    every = dataclasses.replace(s, temporal=FLOW)
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


def test_ballet_portrait_bilateral_pixels_write_the_second_pass(shared_data, tmp_path):
    """The grid is fitted at the model's size (64 wide here) and its frames go back to the clip's
    288x512: to an mp4 (frame count and fps kept) and the preview, the same frames as returned."""
    kw = dict(source_prompt="a dancer", target_prompt="a golden dancer", model="tiny-random", steps=2, use_cache=False,
              read=io.ReadOptions(max_frames=6, size=64), window=4,
              temporal={"keyframes": {"every": 2}, "pixels_bilateral": {}})
    clip = shared_data / "videos" / "ballet-portrait.mp4"
    res = videdit.edit_video(clip, **kw)
    assert res.frames.shape == (6, 512, 288, 3) and res.stats.windows == 2
    folder = tmp_path / "frames"
    videdit.edit_video(clip, folder, preview=tmp_path / "p.gif", **kw)
    written = sorted(folder.glob("*.png"))
    assert len(written) == 6 and (tmp_path / "p.gif").stat().st_size > 0
    assert np.array_equal(io.read_clip(folder, io.ReadOptions())[0], res.frames)


def test_options_are_checked():
    for bad, message in (({"cell": 0}, "cell must be"), ({"bins": 0}, "bins must be"),
                         ({"memory": 1.5}, "memory must be"), ({"scope": "shot"}, "scope must be one of"),
                         ({"memory": 0.5}, "with 'clip' every keyframe")):
        with pytest.raises(VideditError, match=message):
            PixelsBilateralConfig(**bad)
    with pytest.raises(VideditError, match="keep_background does not combine with pixels_bilateral"):
        EditSettings(temporal=BIL, keep_background={"threshold": 0.3})
    with pytest.raises(VideditError, match="builds on the keyframes module"):
        EditSettings(temporal={"pixels_bilateral": {}})
