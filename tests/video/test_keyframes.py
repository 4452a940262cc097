"""Keyframes: selection numbers, extended attention among keyframes, windows carrying the last
keyframe, the old spelling's expansion, presets end to end on tiny-random."""

import dataclasses
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import videdit
from videdit import io
from videdit.cli import main
from videdit.core import CallInfo, make_schedule
from videdit.errors import VideditError
from videdit.inversion import Inversion
from videdit.pipeline import EditSettings, edit_latents, invert_frames
from videdit.video import TemporalContext, Window
from videdit.video.keyframes import Keyframes, KeyframesConfig, frame_changes, neighbours, select_keyframes

from tests.video.clips import SOURCE, TARGET, cut_clip

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ATOL = 1e-4
# the stages on the keyframes module as videdit runs them: tokenflow in its windowed variant (tokenflow-plus)
WINDOWED = {"tokenflow": {"scope": "window", "features": "keys"}}


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


def test_keyframes_follow_the_windows_before():
    """Each window ends on a keyframe and the next spreads its own from there."""
    module = Keyframes(KeyframesConfig(every=3))
    got = []
    for start in range(0, 40, 8):
        window = Window(start, 8, last=start == 32)
        lay = module.layout(window)
        assert lay.keys == tuple(select_keyframes(8, every=3, offset=start, last_keyframe=module.last_keyframe))
        module.last_keyframe = lay.keys[-1]      # as the window's plan leaves it
        got.append((lay.carried, lay.keys[0], lay.keys[-1]))
    assert got[:2] == [(None, 0, 7), (7, 10, 15)] and all(end == start + 7 for (_, _, end), start in
                                                          zip(got, range(0, 40, 8)))


# --- extended attention ------------------------------------------------------------------------

@pytest.mark.parametrize("stage", [None, "tokenflow", "keyframe_flow"])
def test_batch_size_does_not_change_the_edit(tiny, clip, stage):
    """Keyframes run first, together; the frames between read them from the store."""
    temporal = {"keyframes": {"every": 3}, **({stage: WINDOWED.get(stage, {})} if stage else {})}
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=3, editor="prompt_to_prompt",
                     temporal=temporal)
    inv = invert_frames(tiny, clip, s)
    window = Window(0, 8, clip)
    one, eight = (edit_latents(tiny, inv, dataclasses.replace(s, batch_size=b), window=window) for b in (1, 8))
    torch.testing.assert_close(one, eight, rtol=0, atol=ATOL)
    alone = edit_latents(tiny, inv, dataclasses.replace(s, temporal={}))
    changed = (eight - alone).flatten(1).norm(dim=1) / alone.flatten(1).norm(dim=1)   # per frame
    assert (changed > 0.01).all()


def test_keyframes_run_first_and_windows_carry_the_last_one(tiny, clip):
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2, editor="prompt_to_prompt",
                     batch_size=2, temporal={"keyframes": {"every": 3}, **WINDOWED})
    stack, leads = s.temporal_stack(), []
    tokenflow, keyframes = stack.modules      # tokenflow first: it reads the source keys before they are extended
    for i in (0, 4):
        inv = invert_frames(tiny, clip[i:i + 4], s)
        z = edit_latents(tiny, inv, s, window=Window(i, 4, clip[i:i + 4], last=False), temporal=stack)
        assert z.shape == (4, 4, 8, 8) and torch.isfinite(z).all()
        kept = {key[-1] for part in (keyframes.anchors, tokenflow.carried) for key in part}
        leads.append((keyframes.last_keyframe, sorted(kept)))
    assert leads == [(3, [3]), (7, [3, 7])]   # window 2 attends to 3 (window 1's last keyframe) and keeps 7


@pytest.mark.parametrize("stage", ["tokenflow", "keyframe_flow"])
def test_the_last_window_carries_no_keyframe(tiny, clip, stage):
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2, editor="prompt_to_prompt",
                     batch_size=2, temporal={"keyframes": {"every": 3}, stage: WINDOWED.get(stage, {})})
    inv = invert_frames(tiny, clip[:4], s)
    carried, final = s.temporal_stack(), s.temporal_stack()
    a = edit_latents(tiny, inv, s, window=Window(0, 4, clip[:4], last=False), temporal=carried)
    b = edit_latents(tiny, inv, s, window=Window(0, 4, clip[:4], last=True), temporal=final)
    torch.testing.assert_close(a, b, rtol=0, atol=0)

    def kept(stack):   # the keyframes' keys and values, and TokenFlow's outputs and features
        stores = [m.anchors if m.name == "keyframes" else m.carried for m in stack.modules
                  if m.name in ("keyframes", "tokenflow")]
        return {key[-1] for store in stores for key in store}

    assert kept(carried) == {3} and kept(final) == set()


def test_change_selection_sets_the_lead_frames(tiny):
    frames = np.repeat(np.repeat(cut_clip(8, 5, 16), 4, axis=1), 4, axis=2)   # (8, 64, 64, 3)
    inv = Inversion(method="ddim", trajectory=torch.zeros(3, 8, 4, 8, 8))
    ctx = TemporalContext(model=tiny, inversion=inv, schedule=make_schedule(tiny.scheduler_config, 2), info=CallInfo(),
                          n_branches=2, output_branch=1, source_branch=0)
    plan = Keyframes(KeyframesConfig(select="change", every=100)).plan(Window(0, 8, frames), ctx)
    assert plan.lead_frames == (0, 5, 7)


# --- the old spelling ----------------------------------------------------------------------------

def test_the_old_spelling_names_the_modules():
    expand = Keyframes.expand
    assert expand({"every": 4}) == [("keyframes", {"every": 4})]
    assert expand({"every": 4, "propagation": "tokenflow"}) == [("keyframes", {"every": 4}),
                                                                 ("tokenflow", WINDOWED["tokenflow"])]
    assert expand({"propagation": "flow", "pixels": True, "flow": {"colour": "gray"}}) == [
        ("keyframes", {}), ("keyframe_flow", {"flow": {"colour": "gray"}}),
        ("pixels_warp", {"flow": {"colour": "gray"}})]
    assert expand({"pixels": "guided", "guided_radius": 3}) == [("keyframes", {}), ("pixels_guided", {"radius": 3})]
    assert expand({"pixels": "bilateral", "bilateral_cell": 0.5}) == [("keyframes", {}),
                                                                      ("pixels_bilateral", {"cell": 0.5})]
    old = EditSettings(temporal={"keyframes": {"every": 4, "pixels": "bilateral"}})
    new = EditSettings(temporal={"keyframes": {"every": 4}, "pixels_bilateral": {}})
    assert old.temporal_configs == new.temporal_configs
    for bad, message in (({"propagation": "copy"}, "propagation must be one of"),
                         ({"pixels": "ebsynth"}, "pixels must be one of"),
                         ({"flow": {"method": "dis"}}, "flow options apply to propagation 'flow' or pixels true"),
                         ({"pixels": "bilateral", "flow": {"method": "dis"}}, "flow options apply"),
                         ({"pixels": "bilateral", "propagation": "flow"}, "no propagation applies; drop propagation"),
                         ({"pixels": "warp", "guided_radius": 2}, "guided_radius apply with pixels 'guided' only"),
                         ({"bilateral_cell": 0.5}, "bilateral_cell apply with pixels 'bilateral' only")):
        with pytest.raises(VideditError, match=message):
            expand(bad)


def test_options_are_checked():
    with pytest.raises(VideditError, match="select must be one of"):
        KeyframesConfig(select="random")
    with pytest.raises(VideditError, match="quantile must be in"):
        KeyframesConfig(quantile=2)
    with pytest.raises(VideditError, match="every must be a whole number"):
        KeyframesConfig(every=0)
    with pytest.raises(VideditError, match="builds on the keyframes module; add --temporal keyframes"):
        EditSettings(editor="prompt_to_prompt", temporal={"tokenflow": {"scope": "window", "features": "keys"}})
    with pytest.raises(VideditError, match="given twice"):
        EditSettings(temporal={"keyframes": {"pixels": "bilateral"}, "pixels_bilateral": {}})


# --- end to end --------------------------------------------------------------------------------

def test_ballet_portrait_tokenflow_keeps_size_and_frames(shared_data):
    res = videdit.edit_video(shared_data / "videos" / "ballet-portrait.mp4", source_prompt="a dancer",
                             target_prompt="a golden sculpture of a dancer", model="tiny-random", steps=2,
                             use_cache=False, editor="prompt_to_prompt", read=io.ReadOptions(max_frames=10, size=64),
                             window=4, batch_size=3, temporal={"keyframes": {"every": 3}, **WINDOWED})
    assert res.frames.shape == (10, 512, 288, 3) and res.stats.windows == 3


@pytest.mark.parametrize("preset", ["tokenflow", "tokenflow-plus", "fatezero", "text2video-zero-ddim", "recolour"])
def test_presets_edit_the_ballet_portrait(tmp_path, shared_data, capsys, preset):
    """In windows of 4 frames; tokenflow in the one window its preset asks for (all pivots jointly)."""
    out = tmp_path / "out.mp4"
    # the official 500-step inversion is 250 UNet calls at 2 steps: 4 inverse steps here
    window = ["-I", "inversion_steps=4"] if preset == "tokenflow" else ["--window", "4"]
    code = main(["edit", str(shared_data / "videos" / "ballet-portrait.mp4"), "-s", "a dancer", "-t",
                 "a golden dancer", "-o", str(out), "--config", str(CONFIGS / f"{preset}.yaml"), "--model",
                 "tiny-random", "--steps", "2", "--no-cache", "-q", "--size", "64", "--max-frames", "6", *window])
    _, err = capsys.readouterr()
    assert code == 0, err
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert (s.width, s.height, s.average_rate) == (288, 512, Fraction(8))
        assert sum(1 for _ in c.decode(s)) == 6
