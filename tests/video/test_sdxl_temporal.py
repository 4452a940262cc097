"""Temporal modules on tiny-sdxl: cross-frame attention and TokenFlow (official, and videdit's on
keyframes) act on SDXL's self-attention layers and give finite frames of the clip's shape."""

import numpy as np
import pytest

from videdit.pipeline import EditSettings, check_methods, edit_frames

CASES = {"cross_frame": ("plain", {"cross_frame": {"mode": "first"}}),
         "tokenflow": ("prompt_to_prompt", {"tokenflow": {"batch_size": 2}}),   # official: random pivots, norm1
         "tokenflow-plus": ("prompt_to_prompt", {"keyframes": {"every": 2},
                                                 "tokenflow": {"scope": "window", "features": "keys"}})}


@pytest.mark.parametrize("module", sorted(CASES))
def test_runs_on_sdxl_and_changes_the_edit(tiny_sdxl, wolf_frames, module):
    editor, temporal = CASES[module]
    frames = np.concatenate([wolf_frames, wolf_frames[:1]])                     # (3, 64, 64, 3)
    s = EditSettings(source_prompt="a wolf", target_prompt="a fox", steps=2, editor=editor, temporal=temporal)
    check_methods(tiny_sdxl, s)
    out = edit_frames(tiny_sdxl, frames, s)
    alone = edit_frames(tiny_sdxl, frames, EditSettings(source_prompt="a wolf", target_prompt="a fox", steps=2,
                                                        editor=editor))
    assert out.shape == frames.shape and out.dtype == np.uint8
    change = np.abs(out.astype(int) - alone).mean(axis=(1, 2, 3))           # per frame
    assert change[1] > 1.0, (module, change)                                  # the module acted
    if module == "cross_frame":   # the first frame attends to itself, as does the third, its copy
        assert change[0] == 0.0 and change[2] <= 1e-3, change   # the copy: float rounding (measured 1.6e-4)
