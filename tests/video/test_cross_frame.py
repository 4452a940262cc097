"""Cross-frame attention on tiny-random: what each frame attends to, no seams at UNet-batch
or window borders, composition with prompt_to_prompt on the same layers, bounded state."""

import dataclasses

import numpy as np
import pytest
import torch

import videdit
from videdit import io
from videdit.attention import AttentionModule
from videdit.editing import EDITORS
from videdit.inversion import INVERSIONS
from videdit.errors import VideditError
from videdit.pipeline import EditSettings, edit_latents, invert_frames
from videdit.video import TemporalModule, TemporalPlan, TemporalStack, Window
from videdit.video.cross_frame import CrossFrame, CrossFrameConfig
from videdit.video.keyframes import Keyframes, KeyframesConfig

from tests.families import runs_on

SOURCE, TARGET = "a wolf in a forest", "a robot wolf in a forest"
STEPS = 3


def reorder_atol(model_calls: int) -> float:
    """What fp32 rounding alone lets these latents (|x| < 10) differ by when the same frames go
    through the UNet in other batches (other windows, other batch sizes): one tiny-random call's
    output moves by up to 1e-6 of its largest value when its batch is split otherwise (9.2e-7,
    summation order in the convolutions and matmuls), guidance 7.5 mixes two such outputs
    (sqrt(7.5^2 + 6.5^2) = 10), and independent roundings add in quadrature over the guided
    ``model_calls`` a frame's path makes (inversion and edit). Measured maxima on this file's
    3-step settings, torch 2.13 CPU build and 2.14 CUDA build alike: batch size 1 against 3
    8.5e-5 (DDIM) and 9.3e-5 (EDICT); windows of 4 against one of 8 6.6e-5 and 7.7e-5, and
    1.13e-4 for EDICT on another machine. Turning cross-frame attention off moves them by over 5%."""
    return 10 * 10 * 1e-6 * model_calls ** 0.5


ATOL = reorder_atol(2 * STEPS)   # one model call a step, inverting and editing: 2.4e-4
LAYER = "up_blocks.2.attentions.0.transformer_blocks.0.attn1.processor"


def rel(a, b):
    return float((a - b).norm() / b.norm())


def temporal_of(mode):
    """Attention to the first frame, to the first and previous, or to the keyframes (every 3)."""
    return {"keyframes": {"every": 3}} if mode == "keyframes" else {"cross_frame": {"mode": mode}}


def settings(mode, **kw):
    kw.setdefault("temporal", temporal_of(mode))
    kw.setdefault("steps", STEPS)
    return EditSettings(source_prompt=SOURCE, target_prompt=TARGET, **kw)


def by_windows(tiny, s, clip, size, stack=None, inversion=None):
    """Edit ``clip`` window by window (``size`` frames) with one temporal stack -> latents; each
    window inverted alone, or cut from ``inversion``, the whole clip's."""
    stack = stack if stack is not None else s.temporal_stack()
    parts = []
    for i in range(0, len(clip), size):
        frames = clip[i:i + size]
        window = Window(i, len(frames), frames, last=i + size >= len(clip))
        inv = (inversion.select(range(i, i + len(frames))) if inversion is not None
               else invert_frames(tiny, frames, s))
        parts.append(edit_latents(tiny, inv, s, window=window, temporal=stack))
    return torch.cat(parts)


class Probe(AttentionModule):
    """Records (step, frames, k, v) on one layer, each (halves, nb, fb, heads, T, d)."""

    cross = False

    def __init__(self):
        self.seen = []

    def applies(self, layer, cross):
        return layer == LAYER

    def qkv(self, call, q, k, v):
        if not call.info.inverting:
            self.seen.append((call.info.step, call.info.frames, call.split(k).clone(), call.split(v).clone()))
        return q, k, v

    def frames(self, step):
        """{frame: (k, v)} at ``step``, each (halves, nb, heads, T, d)."""
        out = {}
        for s, frames, k, v in self.seen:
            if s == step:
                out.update({f: (k[:, :, j], v[:, :, j]) for j, f in enumerate(frames)})
        return out


class ProbeModule(TemporalModule):
    """A temporal module whose plan is one :class:`Probe`."""

    name = "probe"

    def __init__(self):
        super().__init__(None)
        self.probe = Probe()

    def plan(self, window, ctx):
        return TemporalPlan(modules=[self.probe])


@pytest.mark.parametrize("mode", ["first", "sparse_causal", "keyframes"])
def test_each_frame_attends_to_its_anchors_per_branch_and_half(tiny, clip, mode):
    s = settings(mode, editor="prompt_to_prompt", batch_size=3)
    module = Keyframes(KeyframesConfig(every=3)) if mode == "keyframes" else CrossFrame(CrossFrameConfig(mode=mode))
    probes = ProbeModule(), ProbeModule()
    edit_latents(tiny, invert_frames(tiny, clip, s), s, temporal=TemporalStack([probes[0], module, probes[1]]))
    before, after = probes[0].probe.frames(1), probes[1].probe.frames(1)
    assert sorted(after) == list(range(8))
    k0 = before[0][0]
    assert k0.shape[:2] == (2, 2)   # (guidance halves, branches): each keeps its own anchors
    assert not torch.allclose(k0[:, 0], k0[:, 1])
    for f in range(8):
        anchors = {"first": [0], "sparse_causal": [0, max(f - 1, 0)], "keyframes": [0, 2, 5, 7]}[mode]
        for i in (0, 1):   # keys, values
            want = torch.cat([before[a][i] for a in anchors], dim=-2)   # (halves, nb, heads, m*T, d)
            # branch 0 replays the source: it keeps its own keys and values (repeated to the anchors' count)
            want[:, 0] = before[f][i][:, 0].repeat_interleave(len(anchors), dim=-2)
            torch.testing.assert_close(after[f][i], want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["first", "sparse_causal", "keyframes"])
def test_batch_size_does_not_change_the_edit(tiny, clip, mode):
    s = settings(mode)
    inv = invert_frames(tiny, clip, s)
    one, three, eight = (edit_latents(tiny, inv, dataclasses.replace(s, batch_size=b)) for b in (1, 3, 8))
    torch.testing.assert_close(one, eight, rtol=0, atol=ATOL)
    torch.testing.assert_close(three, eight, rtol=0, atol=ATOL)
    alone = edit_latents(tiny, inv, dataclasses.replace(s, temporal={}))
    assert rel(eight, alone) > 0.05   # it does act


# the last value: model calls a step (EDICT makes two)
@pytest.mark.parametrize("mode,inversion,calls",
                         [("first", "ddim", 1), ("first", "edict", 2), ("sparse_causal", "ddim", 1)])
def test_windows_of_4_equal_one_window_of_8(tiny, clip, mode, inversion, calls):
    """Anchors from earlier windows come from the clip's state, per (layer, step, model call):
    EDICT calls the model twice a step."""
    s = settings(mode, inversion=inversion, batch_size=3)
    whole = edit_latents(tiny, invert_frames(tiny, clip, s), s)
    torch.testing.assert_close(by_windows(tiny, s, clip, 4), whole, rtol=0, atol=reorder_atol(2 * STEPS * calls))


@pytest.mark.parametrize("editor", runs_on(EDITORS))
def test_every_editor_composes_without_seams(tiny, clip, editor):
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2, editor=editor,
                     temporal={"cross_frame": {"mode": "sparse_causal"}})
    inv = invert_frames(tiny, clip[:4], s)
    one, four = (edit_latents(tiny, inv, dataclasses.replace(s, batch_size=b)) for b in (1, 4))
    torch.testing.assert_close(one, four, rtol=0, atol=ATOL)


# Every inversion replays frame by frame; DDPM inversion's noise is one draw for every frame by
# default (noise="shared"), the same in every window. With noise="frame" it is drawn for the
# window's shape, so its windows differ without any temporal module.
@pytest.mark.parametrize("inversion", sorted(INVERSIONS))
def test_every_inversion_keeps_windows_seamless(tiny, clip, inversion):
    """Samplers that call the model more than once a step (EDICT, BDIA) find their own call's
    anchors in the clip's state. A method whose frames share their inversion (ReNoise's
    regularising draws, AIDI's stopping test: ``inverts_frames_apart`` false) edits windows cut
    from the clip's inversion, so the editing alone is compared."""
    s = settings("first", inversion=inversion, batch_size=1, steps=2)
    inv = invert_frames(tiny, clip[:4], s)
    whole = edit_latents(tiny, inv, s)
    apart = s.inversion_method.inverts_frames_apart(s.inversion_config)
    windows = by_windows(tiny, s, clip[:4], 2, inversion=None if apart else inv)
    torch.testing.assert_close(windows, whole, rtol=0, atol=ATOL)


def test_edit_video_windows_have_no_seams(shared_data):
    """End to end, first-frame anchor: windows of 4 give one window of 8's frames."""
    kw = dict(model="tiny-random", steps=STEPS, use_cache=False, source_prompt=SOURCE, target_prompt=TARGET,
              read=io.ReadOptions(max_frames=8, size=64), temporal={"cross_frame": {"mode": "first"}})
    clip = shared_data / "videos" / "dog.mp4"
    a = videdit.edit_video(clip, window=4, batch_size=3, **kw)
    b = videdit.edit_video(clip, window=8, batch_size=8, **kw)
    assert a.stats.windows == 2 and b.stats.windows == 1 and a.frames.shape == (8, 512, 512, 3)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 1
    plain = videdit.edit_video(clip, window=8, **{**kw, "temporal": {}})
    assert np.abs(plain.frames.astype(int) - b.frames.astype(int)).mean() > 1


@pytest.mark.parametrize("target", [SOURCE, TARGET])
def test_with_prompt_to_prompt_on_identical_frames_is_the_per_frame_edit(tiny, clip, target, monkeypatch):
    """Both act on the small self-attention layers (one processor running both); on a clip of
    one frame repeated every anchor is the frame itself, so the edit is prompt_to_prompt's."""
    import videdit.pipeline

    installed = {}
    real = videdit.pipeline.attention_processors

    def spy(unet, plan):
        installed.update(plan or {})
        return real(unet, plan)

    monkeypatch.setattr(videdit.pipeline, "attention_processors", spy)
    same = np.repeat(clip[:1], 4, axis=0)
    s = EditSettings(source_prompt=SOURCE, target_prompt=target, steps=STEPS, editor="prompt_to_prompt",
                     editor_params={"self_replace": 1.0}, temporal={"cross_frame": {"mode": "first"}}, batch_size=3)
    inv = invert_frames(tiny, same, s)
    z = edit_latents(tiny, inv, s)
    names = {type(m).__name__ for m in installed["mid_block.attentions.0.transformer_blocks.0.attn1.processor"].modules}
    assert names == {"InjectQKV", "CrossFrameAttention"}
    per_frame = edit_latents(tiny, invert_frames(tiny, same[:1], s), dataclasses.replace(s, temporal={}))
    torch.testing.assert_close(z, per_frame.expand_as(z), rtol=0, atol=ATOL)


def test_clip_state_is_bounded(tiny, clip):
    """sparse_causal keeps frame 0 and the windows' borders only: the state stops growing."""
    s = settings("sparse_causal", batch_size=2)
    stack, kept = s.temporal_stack(), []
    (module,) = stack.modules
    for i in range(0, 8, 2):
        window = Window(i, 2, clip[i:i + 2], last=False)
        edit_latents(tiny, invert_frames(tiny, clip[i:i + 2], s), s, window=window, temporal=stack)
        kept.append(sorted({key[-1] for key in module.anchors}))
    assert kept == [[0, 1], [0, 1, 3], [0, 3, 5], [0, 5, 7]]
    per_frame = len(module.anchors) // 3
    assert per_frame == 7 * STEPS   # one entry per self-attention layer and step


@pytest.mark.parametrize("mode", ["first", "sparse_causal", "keyframes"])
def test_the_last_window_keeps_nothing_for_a_next(tiny, clip, mode):
    """A clip's last window (or a call without clip_state) carries no anchors, and edits the same:
    at SD size and 50 steps a carried frame would hold 4.6 GB per branch until the clip ends."""
    s = settings(mode, batch_size=3)
    inv = invert_frames(tiny, clip[:4], s)
    carried, final = s.temporal_stack(), s.temporal_stack()
    a = edit_latents(tiny, inv, s, window=Window(0, 4, clip[:4], last=False), temporal=carried)
    b = edit_latents(tiny, inv, s, window=Window(0, 4, clip[:4], last=True), temporal=final)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(carried.modules[0].anchors) >= 7 * STEPS and final.modules[0].anchors == {}


def test_only_the_branches_that_take_anchors_are_kept(tiny, clip):
    """prompt_to_prompt's source branch attends to itself: its keys and values are not stored."""
    s = settings("sparse_causal", editor="prompt_to_prompt", batch_size=2)
    stack = s.temporal_stack()
    edit_latents(tiny, invert_frames(tiny, clip[:4], s), s, window=Window(0, 4, last=False), temporal=stack)
    kept = stack.modules[0].anchors
    assert kept and {t.shape[:2] for v in kept.values() for t in v} == {(2, 1)}  # (halves, nb)


def test_edit_video_tells_its_last_window(shared_data, monkeypatch):
    import videdit.pipeline

    seen, real = [], videdit.pipeline.edit_frames

    def spy(model, frames, settings, **kw):
        seen.append((len(frames), kw["last"]))
        return real(model, frames, settings, **kw)

    monkeypatch.setattr(videdit.pipeline, "edit_frames", spy)
    videdit.edit_video(shared_data / "videos" / "dog.mp4", model="tiny-random", steps=2, use_cache=False, window=4,
                       read=io.ReadOptions(max_frames=10, size=64))
    assert seen == [(4, False), (4, False), (2, True)]


def test_offload_keeps_the_result(tiny, clip):
    s = settings("first")
    inv = invert_frames(tiny, clip[:4], s)
    a = edit_latents(tiny, inv, s)
    offload = dataclasses.replace(s, temporal={"cross_frame": {"mode": "first", "offload": True}})
    stack = offload.temporal_stack()
    b = edit_latents(tiny, inv, offload, window=Window(0, 4, last=False), temporal=stack)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    kept = stack.modules[0].anchors
    assert kept and all(t.device.type == "cpu" for v in kept.values() for t in v)


def test_layers_choose_where_it_acts(tiny, clip):
    s = settings("first", temporal={"cross_frame": {"mode": "first", "layers": "up_blocks.*attn1*"}})
    inv = invert_frames(tiny, clip[:4], s)
    z = edit_latents(tiny, inv, s)
    everywhere = edit_latents(tiny, inv, settings("first"))
    alone = edit_latents(tiny, inv, dataclasses.replace(s, temporal={}))
    assert rel(z, everywhere) > 1e-3 and rel(z, alone) > 1e-3


def test_bad_options_are_errors(tiny, clip):
    with pytest.raises(VideditError, match="mode must be one of"):
        CrossFrameConfig(mode="last")
    with pytest.raises(VideditError, match="mode 'keyframes' is the keyframes module"):
        CrossFrameConfig(mode="keyframes")
    with pytest.raises(VideditError, match="does not take"):
        settings("first", temporal={"cross_frame": {"frames": 3}})
    s = settings("first", temporal={"cross_frame": {"layers": "*attn2*"}})
    with pytest.raises(VideditError, match="match no attn1 layer"):
        edit_latents(tiny, invert_frames(tiny, clip[:1], s), s)
