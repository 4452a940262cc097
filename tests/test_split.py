"""videdit.split: a clip edited as a first pass and window groups gives the one-worker frames, bit
for bit (tiny-random, 64 px, 2 steps); stacks that carry state from window to window are refused
in one line naming the module."""

from pathlib import Path

import numpy as np
import pytest

from videdit import io
from videdit.errors import VideditError
from videdit.pipeline import edit_video
from videdit.pipeline import _settings
from videdit.split import first_pass, group_frames, split_refusal, write_split
from videdit.video import TEMPORAL

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = {"source_prompt": "a dog walking", "target_prompt": "a cat walking", "steps": 2,
            "temporal": {"keyframes": {"pixels": "bilateral"}}}
EDIT = {**SETTINGS, "window": 2}


def test_first_pass_and_window_groups_give_the_one_worker_frames(tiny, tmp_path):
    """6 frames in windows of 2: groups(2) are whole windows ([0, 4), [4, 6)), groups(5) at most
    one a window; either way the frames equal edit_video's (max abs difference 0), and the output
    written from the groups (a PNG folder) holds the same frames."""
    clip = ROOT / "samples" / "red-circle.mp4"   # 64x64
    read = io.ReadOptions(max_frames=6, size=64)
    one = edit_video(clip, model=tiny, read=read, use_cache=False, **EDIT).frames
    made = first_pass(clip, model=tiny, read=read, use_cache=False, **EDIT)
    assert (made.n_frames, made.windows, made.n_windows) == (6, 3, 3)
    assert made.groups(2) == [range(0, 4), range(4, 6)] and len(made.groups(5)) == 3
    for n in (2, 5):
        groups = [group_frames(made, g) for g in made.groups(n)]
        split = np.concatenate([g.output for g in groups])
        assert split.shape == one.shape == (6, 64, 64, 3)
        assert np.abs(split.astype(int) - one).max() == 0
    write_split(tmp_path / "out", made, groups)
    written, _ = io.read_clip(tmp_path / "out")
    assert np.abs(written.astype(int) - one).max() == 0
    with pytest.raises(VideditError, match="whole windows of 2 frames"):
        group_frames(made, range(1, 4))
    with pytest.raises(VideditError, match="cover 2 of the clip's 6 frames"):
        write_split(tmp_path / "short", made, groups[:1])


@pytest.mark.parametrize("temporal, named", [
    ({"cross_frame": {}}, "temporal module 'cross_frame' carries state from window to window"),
    ({"flow_propagation": {}}, "'flow_propagation' carries state"),
    ({"keyframes": {"propagation": "flow"}}, "modules 'keyframes', 'keyframe_flow' carry state from window"),
    ({"keyframes": {"pixels": "bilateral", "bilateral_scope": "window"}}, "'keyframes', 'pixels_bilateral' carry"),
    ({}, "no temporal module makes the frames in a second pass")])
def test_stacks_that_carry_state_are_refused_in_one_line(temporal, named, tiny, shared_data):
    why = split_refusal(_settings(**{**SETTINGS, "temporal": temporal}))
    assert named in why and why.endswith("the clip runs on one worker") and "\n" not in why
    with pytest.raises(VideditError, match=named):   # before any frame is read
        first_pass(shared_data / "videos" / "missing.mp4", model=tiny, **{**EDIT, "temporal": temporal})
    assert split_refusal(_settings(**SETTINGS)) is None


def test_the_registry_says_which_modules_split():
    assert sorted(n for n, spec in TEMPORAL.items() if spec.capabilities()["splits"]) == ["pixels_bilateral"]
