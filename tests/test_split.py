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
    splitting = sorted(n for n, spec in TEMPORAL.items() if spec.capabilities()["splits"])
    assert splitting == ["pixels_bilateral", "tokenflow"]


TOKENFLOW = {"source_prompt": "a dog walking", "target_prompt": "a cat walking", "steps": 2, "window": 4,
             "editor": "plug_and_play", "temporal": {"keyframes": {"every": 2}, "tokenflow": {"scope": "window"}}}


def test_tokenflow_window_splits_after_a_keyframe_pass(tiny):
    """keyframes + tokenflow scope window (tokenflow-plus's stack), 7 frames in windows of 4,
    keyframes every 2 ([0, 2, 3], [5, 6]: the windows' last frames, the first carried into the
    second): the first pass edits the 5 keyframes alone and freezes their attention outputs and
    source features; the frames between, edited per window in groups(2), give edit_video's frames
    (max abs difference 0). The freeze's size is the layer sizes' count (freeze_bytes)."""
    from videdit.video.tokenflow import freeze_bytes

    clip = ROOT / "samples" / "red-circle.mp4"
    read = io.ReadOptions(max_frames=7, size=64)
    one = edit_video(clip, model=tiny, read=read, use_cache=False, **TOKENFLOW).frames
    made = first_pass(clip, model=tiny, read=read, use_cache=False, **TOKENFLOW)
    assert made.needs_model and made.groups(2) == [range(0, 4), range(4, 7)]
    assert made.keyframes.keyframes == [0, 2, 3, 5, 6]
    assert {s: lay.spans for s, lay in made.keyframes.layouts.items()} == {0: (0, 2, 3), 4: (3, 5, 6)}
    with pytest.raises(VideditError, match="pass group_frames\\(model=...\\)"):
        group_frames(made, range(0, 4))
    parts = [made.part(g) for g in made.groups(2)]   # each group sent only the keyframes its windows span
    assert [p.keyframes.keyframes for p in parts] == [[0, 2, 3], [3, 5, 6]]
    groups = [group_frames(p, g, model=tiny, use_cache=False) for p, g in zip(parts, made.groups(2))]
    split = np.concatenate([g.output for g in groups])
    assert split.shape == one.shape == (7, 64, 64, 3)
    assert np.abs(split.astype(int) - one).max() == 0
    layers = [n for n in tiny.unet.attn_processors if n.endswith("attn1.processor")]
    per_keyframe = freeze_bytes(tiny.unet, layers, (8, 8), calls=2, halves=2, edit_branches=1)
    assert made.keyframes.keyframe_bytes(3) == per_keyframe > 0
    assert made.keyframes.nbytes == 5 * per_keyframe


def test_official_tokenflow_keeps_the_clip_on_one_worker():
    official = _settings(**{**SETTINGS, "editor": "plug_and_play", "temporal": {"tokenflow": {}}})
    why = split_refusal(official)
    assert why.startswith("temporal module 'tokenflow' scope 'clip' (the official) draws random pivots")
    assert why.endswith("the clip runs on one worker (scope window, configs/tokenflow-plus.yaml, splits)")
    plus = {k: v for k, v in TOKENFLOW.items() if k != "window"}
    assert split_refusal(_settings(**plus)) is None
    assert "token merging draws its merges per UNet call" in split_refusal(_settings(**plus, token_merging=0.5))


def test_a_tokenflow_plus_batch_job_split_in_two_writes_the_one_worker_output(tmp_path):
    """edit_batch, local: the tokenflow stack with split: 2 (first pass, then both groups on this
    worker's model) writes the same PNG frames as the job unsplit. 5 frames in windows of 4: the
    second window is its keyframe alone (no frames between to edit); both windows' inversions
    come from the unsplit job's cache."""
    from videdit.batch import JobRunner, edit_batch

    job = {"input": str(ROOT / "samples" / "red-circle.mp4"), "source": "a dog walking", "target": "a cat walking",
           "model": "tiny-random", "device": "cpu", "steps": 2, "size": 64, "max_frames": 5, "window": 4,
           "editor": "plug_and_play", "temporal": TOKENFLOW["temporal"]}
    result = edit_batch([{**job, "output": str(tmp_path / "one")}, {**job, "output": str(tmp_path / "two"),
                                                                     "split": 2}],
                        runner=JobRunner(tmp_path / "cache"), scores=False)
    assert [r.status for r in result.jobs] == ["done"] * 2, [r.error for r in result.jobs]
    assert result.jobs[1].note is None and result.jobs[1].frames == 5
    assert (result.jobs[0].inversions_computed, result.jobs[1].inversions_computed,
            result.jobs[1].inversions_cached) == (2, 0, 2)
    one, _ = io.read_clip(tmp_path / "one")
    two, _ = io.read_clip(tmp_path / "two")
    assert one.shape == two.shape == (5, 64, 64, 3) and np.abs(one.astype(int) - two).max() == 0


def test_batch_notes_for_keyframe_splits_that_stay_on_one_worker(tmp_path):
    """split: 2 on the tokenflow stack: 2 groups; with token merging or a ControlNet, 1 and the note."""
    from videdit.batch import expand_jobs, split_of

    base = {"input": str(ROOT / "samples" / "red-circle.mp4"), "target": "a cat", "model": "tiny-random", "split": 2,
            "editor": "plug_and_play", "temporal": TOKENFLOW["temporal"]}
    plain, merged, controlled = expand_jobs(
        [{**base, "output": "a"}, {**base, "output": "b", "token_merging": 0.5},
         {**base, "output": "c", "control": "canny", "controlnet": "tiny-random"}], base=tmp_path)
    assert split_of(plain) == (2, None)
    assert split_of(merged)[0] == 1 and "token merging draws its merges per UNet call" in split_of(merged)[1]
    assert split_of(controlled) == (1, "split 2: a keyframe split (tokenflow) with ControlNets is not made yet; "
                                       "the clip runs on one worker")
