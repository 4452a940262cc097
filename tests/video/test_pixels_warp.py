"""pixels_warp: after decoding, the frames between keyframes from the edited keyframes'
pixels brought along the source's flow."""

import dataclasses

import numpy as np

from videdit.pipeline import EditSettings, edit_frames
from videdit.video.keyframes import neighbours, select_keyframes

from tests.video.clips import INNER, SOURCE, TARGET, slid, sliding_texture


def test_pixels_make_the_frames_between_from_the_edited_keyframes(tiny):
    """With pixels_warp each frame between keyframes 0, 3 and 5 is their decoded edits brought
    onto it along the flow (2 px per frame of distance) and blended by temporal distance.
    Without it, the frames between are their own edits, far from that."""
    frames = sliding_texture(6)
    keys = select_keyframes(6, every=4)
    assert keys == [0, 3, 5]
    temporal = {"keyframes": {"every": 4}, "keyframe_flow": {}, "pixels_warp": {}}
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, guidance=7.5, temporal=temporal)

    def expected(out, g):
        return sum(w * slid(out[a], g - a) for a, w in neighbours(g, keys))

    out = edit_frames(tiny, frames, s)
    errs = [np.abs(out[g].astype(np.float32) - expected(out, g))[INNER].mean() for g in (1, 2, 4)]
    own = edit_frames(tiny, frames, dataclasses.replace(s, temporal={"keyframes": {"every": 4}, "keyframe_flow": {}}))
    own_errs = [np.abs(own[g].astype(np.float32) - expected(own, g))[INNER].mean() for g in (1, 2, 4)]
    assert max(errs) < 0.5 and min(own_errs) > 20 * max(errs), (errs, own_errs)   # measured 0.25 and 32-35
    assert np.array_equal(out[keys], own[keys])           # keyframes are left as decoded
