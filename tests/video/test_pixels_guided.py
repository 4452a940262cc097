"""pixels_guided: every frame its own source under the keyframes' local colour maps carried
along the flow; the guided filter's fit itself."""

import dataclasses

import numpy as np
import pytest

from videdit.errors import VideditError
from videdit.pipeline import EditSettings, edit_frames
from videdit.video import guided
from videdit.video.keyframes import neighbours, select_keyframes
from videdit.video.pixels_guided import PixelsGuidedConfig

from tests.video.clips import INNER, SOURCE, TARGET, slid, sliding_texture


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


def test_guided_pixels_carry_the_keyframes_colour_maps(tiny):
    """pixels_guided: every frame is its own source frame under a colour map; between
    keyframes the maps are the keyframes' brought along the flow. So a frame between equals
    its source under the map warped from the keyframes, computed here by hand."""
    frames = sliding_texture(6)
    keys = select_keyframes(6, every=4)
    temporal = {"keyframes": {"every": 4}, "keyframe_flow": {}, "pixels_guided": {"radius": 3}}
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, guidance=7.5, temporal=temporal)
    out = edit_frames(tiny, frames, s)
    plain = edit_frames(tiny, frames, dataclasses.replace(s, temporal={"keyframes": {"every": 4}, "keyframe_flow": {}}))
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


def test_options_are_checked():
    with pytest.raises(VideditError, match="radius must be"):
        PixelsGuidedConfig(radius=-1)
    with pytest.raises(VideditError, match="eps must be in"):
        PixelsGuidedConfig(eps=0)
    with pytest.raises(VideditError, match="does not take"):
        EditSettings(temporal={"keyframes": {}, "pixels_guided": {"flow": {"speed": 1}}})
    assert EditSettings(temporal={"keyframes": {}, "pixels_guided": {}}, keep_background={"threshold": 0.3}).keep_background
