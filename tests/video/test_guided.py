"""The colour guided filter: its fit, its coefficients' layout and its default window."""

import numpy as np
import pytest

from videdit.errors import VideditError
from videdit.video import guided


def test_guided_fit_recovers_a_colour_map_and_follows_the_guide():
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


def test_stacked_round_trips_and_auto_radius():
    rng = np.random.default_rng(1)
    A, b = rng.random((4, 5, 3, 3)).astype(np.float32), rng.random((4, 5, 3)).astype(np.float32)
    t = guided.ColourTransform(A=A, b=b)
    s = t.stacked()
    assert s.shape == (4, 5, 12) and np.array_equal(s[1, 2, :3], A[1, 2, 0]) and np.array_equal(s[1, 2, 9:], b[1, 2])
    back = guided.ColourTransform.unstack(s)
    assert np.array_equal(back.A, t.A) and np.array_equal(back.b, t.b)
    assert guided.auto_radius((512, 288)) == 36 and guided.auto_radius((64, 64)) == 8
    assert guided.auto_radius((8, 9)) == 2
