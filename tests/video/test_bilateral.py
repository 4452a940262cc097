"""Affine colour maps in a bilateral grid (videdit.video.bilateral), on the toy world's frames."""

import numpy as np
import pytest

from videdit.errors import VideditError
from videdit.toy import sample_clip
from videdit.toy.world import WorldObject, render
from videdit.video import bilateral


def _recolour(frame: np.ndarray, old: tuple[int, int, int], new: tuple[int, int, int]) -> np.ndarray:
    """``frame`` with ``old`` (and its anti-aliased mixtures with the background) turned to ``new``:
    each pixel's share of the object colour, from its distance to the background, re-mixed."""
    f = frame.astype(np.float32)
    background = f[0, 0]
    share = np.clip(np.linalg.norm(f - background, axis=-1) / np.linalg.norm(np.float32(old) - background), 0, 1)
    out = background + share[..., None] * (np.float32(new) - background)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_grid_shape():
    assert bilateral.grid_shape((64, 64), 0.25, 8) == bilateral.GridShape(5, 5, 9)
    assert bilateral.grid_shape((540, 960), 0.25, 8) == bilateral.GridShape(5, 8, 9)   # portrait-width clip, landscape
    assert bilateral.grid_shape((64, 64), 1.0, 4) == bilateral.GridShape(1, 1, 5)       # one map for the frame
    with pytest.raises(VideditError, match=r"in \(0, 1\]"):
        bilateral.grid_shape((64, 64), 0, 8)


def test_a_recolouring_fitted_on_one_frame_carries_to_the_others():
    """A clip's shape recoloured in its first frame: the grid fitted there recolours the later
    frames, where the shape has moved, as the same recolouring done exactly does: under half a
    level apart on average, under 6 at the 99th percentile, and the shape's inside within a level."""
    clip = sample_clip(np.random.default_rng(0), "translate", 8)          # a green shape on white
    old, new = clip.objects[0].rgb, (30, 60, 220)
    grid = bilateral.ColourGrid(bilateral.grid_shape((64, 64), 0.25, 8), (64, 64))
    grid.add(clip.frames[0], _recolour(clip.frames[0], old, new))
    maps = grid.solve()
    for t in (0, 3, 7):
        out = bilateral.apply(maps, grid.shape, clip.frames[t])
        want = _recolour(clip.frames[t], old, new)
        err = np.abs(out.astype(int) - want).mean(-1)
        assert err.mean() < 0.5 and np.percentile(err, 99) < 6, (t, err.mean(), np.percentile(err, 99))
        inside = clip.masks[t, 0]
        assert np.abs(out[inside].astype(int).mean(0) - want[inside].mean(0)).max() < 1


def test_maps_are_local_in_space():
    """Two shapes of one colour, the left one recoloured in the keyframe and the right one not:
    with cells of a quarter of the frame each keeps its own map, with one cell for the frame
    they share one."""
    a = WorldObject("square", "red", (10.0, 32.0), 10.0, 0.0)
    b = WorldObject("square", "red", (54.0, 32.0), 10.0, 0.0)
    frame, vis = render((a, b), ("gray",), 64)
    left = vis[0] >= 0.5
    edited = frame.copy()
    edited[left] = (30, 60, 220)
    for cell, right_kept in ((0.25, True), (1.0, False)):
        grid = bilateral.ColourGrid(bilateral.grid_shape((64, 64), cell, 8), (64, 64)).add(frame, edited)
        out = bilateral.apply(grid.solve(), grid.shape, frame)
        right = vis[1] >= 0.5
        assert (np.abs(out[right].astype(int).mean(0) - frame[right].astype(int).mean(0)).max() < 10) == right_kept
        if right_kept:
            assert np.abs(out[left].astype(int).mean(0) - (30, 60, 220)).max() < 10


def test_sums_add_and_scale():
    """Grids add up their keyframes' sums; scaled(0) contributes nothing; mismatched grids and an
    empty grid are errors."""
    clip = sample_clip(np.random.default_rng(1), "scale", 4)
    shape = bilateral.grid_shape((64, 64), 0.25, 8)
    one = bilateral.ColourGrid(shape, (64, 64)).add(clip.frames[0], clip.frames[1])
    two = bilateral.ColourGrid(shape, (64, 64)).add(clip.frames[2], clip.frames[3])
    both = bilateral.ColourGrid(shape, (64, 64)).add(clip.frames[0], clip.frames[1]).add(clip.frames[2], clip.frames[3])
    summed = one.scaled(1.0)
    summed += two
    np.testing.assert_allclose(summed.xx, both.xx, rtol=1e-9)
    np.testing.assert_allclose(summed.yx, both.yx, rtol=1e-9)
    zero = one.scaled(0.0)
    zero += two
    np.testing.assert_allclose(zero.solve(), two.solve(), atol=1e-6)
    assert summed.xx[:, 3, 3].sum() == pytest.approx(2 * 64 * 64)     # each pixel's weights sum to 1
    with pytest.raises(VideditError, match="no keyframe pixels"):
        bilateral.ColourGrid(shape, (64, 64)).solve()
    with pytest.raises(VideditError, match="cannot add"):
        one += bilateral.ColourGrid(bilateral.grid_shape((64, 64), 0.5, 8), (64, 64))
    with pytest.raises(VideditError, match="frames of its size"):
        one.add(clip.frames[0][:32], clip.frames[1][:32])


def test_ridge_must_be_positive():
    clip = sample_clip(np.random.default_rng(1), "scale", 2)
    grid = bilateral.ColourGrid(bilateral.grid_shape((64, 64), 0.25, 8), (64, 64)).add(clip.frames[0], clip.frames[1])
    with pytest.raises(VideditError, match="ridge must be > 0"):
        grid.solve(ridge=0)
