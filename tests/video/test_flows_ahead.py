"""Source flows are estimated in the flow thread while the window is denoised: every (frame,
keyframe) pair keyframe_flow and pixels_warp read was started ahead in their plans, and
flow_propagation's window flow too (none estimated in the edit's own thread); the frames are
those of flows estimated in place."""

import threading

import numpy as np
import pytest

from videdit.pipeline import EditSettings, edit_frames
from videdit.video import flow
from videdit.video.keyframes import PairFlows

from tests.video.clips import SOURCE, TARGET, sliding_texture


def estimating_threads(monkeypatch, *modules) -> list[str]:
    """The names of the threads that call ``compute_flows`` (as ``modules`` name it), in the order they call."""
    names, estimate = [], flow.compute_flows

    def where(*args, **kwargs):
        names.append(threading.current_thread().name)
        return estimate(*args, **kwargs)

    for module in modules:
        monkeypatch.setattr(module, "compute_flows", where, raising=False)
    return names


def edit_two_windows(tiny, frames, temporal) -> np.ndarray:
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2, guidance=7.5, temporal=temporal)
    stack = s.temporal_stack()
    half = len(frames) // 2
    return np.concatenate([edit_frames(tiny, frames[:half], s, temporal=stack, start=0, last=False),
                           edit_frames(tiny, frames[half:], s, temporal=stack, start=half, last=True)])


@pytest.mark.parametrize("temporal", [
    {"keyframes": {"every": 3}, "keyframe_flow": {}, "pixels_warp": {}},
    {"keyframes": {"every": 3}, "keyframe_flow": {"flow": {"method": "farneback"}}, "pixels_warp": {}}],
    ids=["one flow setting", "two flow settings"])
def test_every_pair_is_started_ahead_and_gives_the_same_frames(tiny, monkeypatch, temporal):
    made: list[PairFlows] = []
    init = PairFlows.__init__

    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(PairFlows, "__init__", record)
    frames = sliding_texture(10)
    ahead = edit_two_windows(tiny, frames, temporal)
    # windows of 5 frames: keyframes 0, 2, 4, then 7, 9 with 4 carried; each frame between to its nearest
    # keyframes on either side, under each stage's flow setting
    pairs = [[(1, 0), (1, 2), (3, 2), (3, 4)], [(5, 4), (5, 7), (6, 4), (6, 7), (8, 7), (8, 9)]]
    methods = sorted({(t.get("flow") or {}).get("method", "dis") for t in temporal.values()})
    assert [sorted((k[0].method, k[1], k[2]) for k in p.flows) for p in made] == [
        [(m, g, a) for m in methods for g, a in w] for w in pairs]
    assert [p.inline for p in made] == [0, 0]

    monkeypatch.setattr(PairFlows, "ahead", lambda self, config, pairs: None)   # each pair estimated when read
    made.clear()
    in_place = edit_two_windows(tiny, frames, temporal)
    assert [p.inline for p in made] == [len(p.flows) for p in made] and all(p.inline >= 4 for p in made)
    assert np.array_equal(ahead, in_place)


@pytest.mark.parametrize("temporal", [{"keyframes": {"every": 3}, "keyframe_flow": {}, "pixels_guided": {}},
                                      {"flow_propagation": {}}], ids=["keyframe stages", "flow_propagation"])
def test_no_flow_is_estimated_in_the_edits_thread(tiny, monkeypatch, temporal):
    import videdit.video.flow_propagation
    import videdit.video.keyframes

    threads = estimating_threads(monkeypatch, flow, videdit.video.keyframes, videdit.video.flow_propagation)
    edit_two_windows(tiny, sliding_texture(10), temporal)
    assert len(threads) >= 2 and all(t.startswith("videdit-flow") for t in threads), threads


def test_an_error_in_the_flow_thread_is_raised_in_the_edit(tiny, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("flow failed")

    monkeypatch.setattr(flow, "compute_flows", broken)   # what the flow thread runs
    with pytest.raises(RuntimeError, match="flow failed"):
        edit_two_windows(tiny, sliding_texture(10), {"keyframes": {"every": 3}, "pixels_warp": {}})


def test_rerenders_keyframe_pairs_are_started_at_the_keyframes_first_pass(tiny, monkeypatch):
    """Shape-aware fusion's pair and pixel-aware fusion's (previous and first keyframe to this one)
    are estimated in the flow thread from the keyframe's direct pass on; none in the edit's thread
    while keyframes are sampled (Ebsynth's chains, after them, read their flows where they go)."""
    from tests.video.test_rerender import run
    from videdit.toy import sample_clip
    from videdit.video import rerender

    threads = estimating_threads(monkeypatch, flow, rerender)
    _, module = run(tiny, sample_clip(0, "translate", 8).frames[:7], steps=4)
    assert [(p.frame, p.kind) for p in module.passes] == [(0, "first"), (1, "direct"), (1, "fused"), (6, "direct"),
                                                         (6, "fused")]
    assert len(threads) == 3 and all(t.startswith("videdit-flow") for t in threads), threads
    assert module._ahead == {}   # every pair started ahead was read


@pytest.mark.parametrize("propagate", ["ebsynth", "warp"])
def test_rerenders_frames_between_read_flows_started_ahead(monkeypatch, propagate):
    """The frames between keyframes (keyframes 0, 1, 6, 11 of 12 frames): every source flow the
    Ebsynth chains read (8 forward steps, 8 backward) or the flow warp reads (2 keyframes onto each
    of the 8 frames, and the 6 steps from a frame between that carry the span's choice, which the
    Ebsynth stage reads from its forward chain) is estimated once, in the flow thread; the frames are
    those of flows estimated in place."""
    from videdit.video import rerender as rr
    from videdit.video.rerender import RerenderConfig
    from videdit.toy import sample_clip
    from videdit.video.module import Window

    monkeypatch.setattr(rr.Exemplar, "synthesize", lambda self, guides: (   # the keyframe's result, no error
        self.style.permute(1, 2, 0).byte().numpy(), np.zeros(guides[0].shape[:2], np.float32)))
    clip = sample_clip(0, "translate", 12).frames

    def between():
        module = rr.Rerender(RerenderConfig(interval=5, propagate=propagate, gradient_blend=False))
        for k, colour in {0: 200, 1: 200, 6: 120, 11: 40}.items():
            module.results[k], module.sources[k] = np.full_like(clip[k], colour), clip[k]
        return module.finish_clip(Window(0, 12, clip, last=True)), module

    threads = estimating_threads(monkeypatch, flow, rr)
    ahead, module = between()
    pairs = 16 + 6 * (propagate == "warp")
    assert len(threads) == pairs and all(t.startswith("videdit-flow") for t in threads), threads
    assert module._between_ahead == {}   # every pair started was read
    monkeypatch.setattr(rr.Rerender, "_start_between_flows", lambda self, window, pairs: None)
    threads.clear()
    in_place, _ = between()
    assert len(threads) == pairs and "videdit-flow" not in "".join(threads)
    assert np.array_equal(ahead, in_place)
