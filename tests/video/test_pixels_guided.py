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
