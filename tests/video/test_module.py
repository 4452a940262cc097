"""The temporal contract: every temporal module and frame stage with every editor, on a short
clip in two windows; the stack's order, its frames to edit, and its second pass."""

import numpy as np
import pytest

from videdit.editing import EDITORS
from videdit.errors import VideditError
from videdit.pipeline import EditSettings, edit_frames
from videdit.video import TEMPORAL, TemporalModule, TemporalStack, Window

from tests.families import runs_on
from tests.video.clips import SOURCE, TARGET, sliding_texture

# every registered module, alone or on the keyframes it builds on
STACKS = {
    "cross_frame": {"cross_frame": {"mode": "sparse_causal"}},
    "keyframes": {"keyframes": {"every": 2}},
    "tokenflow": {"keyframes": {"every": 2}, "tokenflow": {"scope": "window", "features": "keys"}},
    "keyframe_flow": {"keyframes": {"every": 2}, "keyframe_flow": {}},
    "pixels_warp": {"keyframes": {"every": 2}, "pixels_warp": {}},
    "pixels_guided": {"keyframes": {"every": 2}, "pixels_guided": {}},
    "pixels_bilateral": {"keyframes": {"every": 2}, "pixels_bilateral": {}},
    "flow_propagation": {"flow_propagation": {}},
    "keep_background": {"keep_background": {}},
    "rerender": {"rerender": {"interval": 1}},   # keyframes 0, 1, 2, ...: each window holds some
}
# blended's reference start (noise every frame shares, after skipping the first of 2 steps) leaves
# the modules next to nothing to change (measured 0.003 of a level): it starts from the inversion here
EDITOR_OPTIONS = {"blended": {"mask": np.ones((32, 32), np.float32), "from_inversion": True},
                  "differential": {"mask": np.full((32, 32), 0.5, np.float32)},
                  "sega": {"concepts": ["robot"], "warmup": 0}, "ledits": {"concepts": ["robot"], "masking": "noise"}}


# the stacks whose modules change self-attention (extended attention, anchors): the fatezero editor refuses them
CHANGES_SELF_ATTENTION = {"cross_frame", "keyframes", "keyframe_flow", "pixels_bilateral", "pixels_guided",
                          "pixels_warp", "rerender"}


def test_every_module_is_in_the_matrix():
    assert sorted(STACKS) == sorted(TEMPORAL)


@pytest.fixture(scope="module")
def frames():
    return sliding_texture(4)[:, ::2, ::2]   # (4, 32, 32, 3)


@pytest.fixture(scope="module")
def plain_edits(tiny, frames):
    """Each editor's edit without temporal modules, by frame."""
    return {editor: edit_frames(tiny, frames, settings(editor, {})) for editor in runs_on(EDITORS)}


def settings(editor, temporal):
    return EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2, batch_size=2, editor=editor,
                        editor_params=EDITOR_OPTIONS.get(editor, {}), temporal=temporal,
                        strength=1.0 if editor == "blended" else None)


@pytest.mark.parametrize("module", sorted(STACKS))
@pytest.mark.parametrize("editor", runs_on(EDITORS))
def test_every_module_with_every_editor(tiny, frames, plain_edits, module, editor):
    """Two windows of two frames through one stack, as edit_video runs them: the clip's frames at
    its size, every module acting (the frames differ from the editor's own edit; keep_background
    puts back source pixels only: each pixel between the edit and the source), except tokenflow
    without a source branch, which is refused by name before any work."""
    if TEMPORAL[module].module_class.needs_source_branch and not EDITORS[editor].has_source_branch:
        with pytest.raises(VideditError, match=f"editor {editor!r} runs none"):
            settings(editor, STACKS[module])
        return
    s = settings(editor, STACKS[module])
    stack = s.temporal_stack()
    if editor == "fatezero" and module in CHANGES_SELF_ATTENTION:   # it replays the inversion's own anchors
        with pytest.raises(VideditError, match="drop the temporal modules that change self-attention"):
            edit_frames(tiny, frames[:2], s, temporal=stack)
        return
    out = np.concatenate([edit_frames(tiny, frames[i:i + 2], s, start=i, temporal=stack, last=i == 2)
                          for i in (0, 2)])
    if stack.second_pass:
        out = np.concatenate([stack.finish_clip(Window(i, 2, frames[i:i + 2], last=i == 2))
                              for i in (0, 2)])
    assert out.shape == frames.shape and out.dtype == np.uint8
    edit, source, out = plain_edits[editor].astype(int), frames.astype(int), out.astype(int)
    if module == "keep_background":   # random weights change the latents nearly everywhere: it keeps little
        assert (np.abs(out - edit) <= np.abs(source - edit) + 1).all()
        return
    changed = np.abs(out - edit).mean()
    assert changed > 0.02, f"{module} x {editor}: {changed:.3f}"   # measured 0.05 (cross_frame x diffedit) and up


class Recorder(TemporalModule):
    """Records the hooks' calls: (hook, window start)."""

    name = "recorder"

    def __init__(self, order=0, makes=False, needs=None):
        super().__init__(None)
        self.calls, self.order, self.makes_frames, self.needs = [], order, makes, needs

    def frames_to_edit(self, window):
        self.calls.append(("frames_to_edit", window.start))
        return self.needs

    def plan(self, window, ctx):
        self.calls.append(("plan", window.start))
        return super().plan(window, ctx)

    def finish_window(self, window, frames, latents):
        self.calls.append(("finish_window", window.start, latents.edited))
        return frames


def test_the_stack_runs_in_order_and_edits_what_the_modules_need(tiny, frames):
    late, early = Recorder(order=5), Recorder(order=-5)
    stack = TemporalStack([late, early])
    assert stack.modules == [early, late] and stack.frames_to_edit(Window(0, 4)) is None   # no module makes frames
    s = settings("plain", {})
    edit_frames(tiny, frames[:2], s, start=0, temporal=stack, last=False)
    assert late.calls == [("plan", 0), ("finish_window", 0, (0, 1))]
    maker, keys = Recorder(makes=True, needs=[0]), Recorder(needs=[1])
    stack = TemporalStack([maker, keys])
    assert stack.frames_to_edit(Window(0, 4)) == (0, 1)
    out = edit_frames(tiny, frames, s, temporal=stack)
    assert maker.calls[-1] == ("finish_window", 0, (0, 1))
    assert np.array_equal(out[2:], frames[2:])   # the frames no module needs are the source's
    assert TemporalStack([Recorder(makes=True, needs=[0]), Recorder()]).frames_to_edit(Window(0, 4)) is None


def test_a_second_pass_needs_one_maker():
    class Maker(Recorder):
        second_pass = True

    with pytest.raises(VideditError, match="each make the clip's frames in a second pass; keep one"):
        TemporalStack([Maker(), Maker()]).finish_clip(Window(0, 1))
