"""flow_propagation: the fusion lowers the flow warp error of an edit, hands its last frame
from window to window exactly, caches its flow, and runs from the rerender preset."""

import json
from pathlib import Path

import numpy as np
import pytest

from videdit import io
from videdit.cli import main
from videdit.errors import VideditError
from videdit.metrics import temporal_report
from videdit.pipeline import EditSettings, edit_frames, edit_latents, edit_video, invert_frames
from videdit.toy import sample_clip
from videdit.video import TEMPORAL
from videdit.video.flow_propagation import FlowPropagationConfig

REPO = Path(__file__).resolve().parents[2]
EDIT = dict(source_prompt="a", target_prompt="a red square", steps=10, guidance=3.0, use_cache=False,
            read=io.ReadOptions(size="source"))   # the toy clip's 64x64


@pytest.fixture(scope="module")
def toy_mp4(tmp_path_factory):
    """A toy clip (one shape sliding 2.7 px per frame, 64x64, 8 frames) as an mp4, and its
    frames as read back (the reference the scores use)."""
    path = tmp_path_factory.mktemp("toy") / "translate.mp4"
    io.write_video(path, sample_clip(0, "translate", 8).frames, 8)
    return path, io.read_clip(path)[0]


@pytest.fixture(scope="module")
def plain_edit(tiny, toy_mp4):
    """The clip edited without a temporal module (``EDIT``), once for the tests that compare with it."""
    return edit_video(toy_mp4[0], model=tiny, **EDIT).frames


def test_config_is_checked():
    assert "flow_propagation" in TEMPORAL
    for bad, message in [({"strength": 1.5}, "strength"), ({"start": 0.9, "end": 0.5}, "start <= end"),
                         ({"target": "eps"}, "unknown target"), ({"method": "lk"}, "unknown flow method"),
                         ({"preset": "slow"}, "DIS preset"), ({"method": "raft"}, "torchvision")]:
        with pytest.raises(VideditError, match=message):
            FlowPropagationConfig(**bad)
    with pytest.raises(VideditError, match="does not take radius"):
        EditSettings(temporal={"flow_propagation": {"radius": 2}})


def test_propagation_lowers_the_warp_error(tiny, toy_mp4, plain_edit):
    """tiny-random's edits flicker at random; fusing along the source's flow must take much of
    that out. Measured on the toy clip (10 steps, guidance 3): warp error 27.3 -> 17.0 of 255
    (ratio to the source's own 0.28: 98 -> 61), flicker 1.15 -> 0.69; with target="latent"
    17.2. A clip with an occlusion (toy "occlude", seed 1): 26.4 -> 21.7."""
    path, source = toy_mp4
    plain = temporal_report(source, plain_edit)
    fused = temporal_report(source, edit_video(path, model=tiny, temporal={"flow_propagation": {}}, **EDIT).frames)
    latent = temporal_report(source, edit_video(path, model=tiny, **EDIT,
                                                temporal={"flow_propagation": {"target": "latent"}}).frames)
    assert plain["source_warp_error"] < 1 and plain["warp_error"] > 20
    assert fused["warp_error"] < 0.75 * plain["warp_error"]
    assert latent["warp_error"] < 0.75 * plain["warp_error"]
    assert fused["flicker"] < 0.8 * plain["flicker"]


def test_windows_hand_over_exactly(tiny, toy_mp4):
    """The plain editor treats frames independently, so an edit in windows of 3 frames with
    the hand-over (one temporal stack for the clip) equals the edit in one window; dropping the
    hand-over (a fresh stack per window) does not, and scores worse."""
    path, source = toy_mp4
    temporal = {"flow_propagation": {"strength": 0.7}}
    one = edit_video(path, model=tiny, temporal=temporal, window=8, **EDIT)
    three = edit_video(path, model=tiny, temporal=temporal, window=3, **EDIT)
    assert three.stats.windows == 3 and one.stats.windows == 1
    assert np.abs(one.frames.astype(int) - three.frames).max() <= 1
    settings = EditSettings(**{k: v for k, v in EDIT.items() if k not in ("use_cache", "read")}, temporal=temporal)
    cut = np.concatenate([edit_frames(tiny, source[i:i + 3], settings, start=i, temporal=settings.temporal_stack())
                          for i in range(0, 8, 3)])
    assert np.abs(one.frames.astype(int) - cut).max() > 10
    assert temporal_report(source, cut)["warp_error"] > temporal_report(source, one.frames)["warp_error"]


def test_strength_zero_changes_nothing(tiny, toy_mp4, plain_edit):
    path, _ = toy_mp4
    b = edit_video(path, model=tiny, temporal={"flow_propagation": {"strength": 0.0}}, **EDIT).frames
    np.testing.assert_array_equal(plain_edit, b)


def test_flow_is_cached_beside_the_inversions(tiny, toy_mp4, tmp_path, monkeypatch):
    from videdit.video import flow

    path, _ = toy_mp4
    kw = {**EDIT, "use_cache": True, "cache_dir": tmp_path, "temporal": {"flow_propagation": {}}, "window": 4}
    first = edit_video(path, model=tiny, **kw).frames
    assert len(list(tmp_path.glob("flow-*.safetensors"))) == 2                    # one per window
    assert len(list(tmp_path.glob("*.safetensors"))) == 4                         # and two inversions

    def no_estimate(*args):
        raise AssertionError("flow recomputed although cached")

    monkeypatch.setattr(flow, "_estimate", no_estimate)
    again = edit_video(path, model=tiny, **kw)
    assert again.stats.cache_hits == 2
    # (an inversion read from the cache already differs by <= 1 level from a fresh one)
    assert np.abs(first.astype(int) - again.frames).max() <= 1


def test_needs_the_source_frames(tiny, toy_mp4):
    settings = EditSettings(**{k: v for k, v in EDIT.items() if k not in ("use_cache", "read")},
                            temporal={"flow_propagation": {}})
    inv = invert_frames(tiny, toy_mp4[1][:2], settings)
    with pytest.raises(VideditError, match="needs the window's source frames"):
        edit_latents(tiny, inv, settings)


def test_rerender_preset_from_the_cli(toy_mp4, tmp_path, capsys):
    """`videdit edit ... --config configs/rerender-pull.yaml --report` runs the module and writes
    the scores; --temporal overrides one of the preset's options."""
    path, _ = toy_mp4
    out, report = tmp_path / "out.mp4", tmp_path / "out.json"
    code = main([*map(str, ["edit", path, "-t", "a red square", "-o", out, "--config",
                            REPO / "configs/rerender-pull.yaml", "--model", "tiny-random", "--steps", "4",
                            "--size", "64", "--no-cache", "-q", "--report", report,
                            "--temporal", "flow_propagation:strength=0.9,target=latent"])])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    scores = json.loads(report.read_text())
    assert scores["frames"] == 8 and scores["size"] == [64, 64] and scores["warp_error"] > 0
    assert f"{scores['warp_error']:.3f}" in stdout and "flicker" in stdout


def test_temporal_options_merge_and_bad_config(tmp_path, capsys):
    from videdit.cli import _with_config, build_parser, temporal_modules

    parser = build_parser()
    a = _with_config(parser, ["edit", "x.mp4", "-t", "y", "-o", "o.mp4", "--config",
                              str(REPO / "configs/rerender-pull.yaml"), "--temporal", "flow_propagation:strength=0.9"])
    modules = temporal_modules(a)
    assert modules["flow_propagation"]["strength"] == 0.9 and modules["flow_propagation"]["end"] == 0.8
    bad = tmp_path / "bad.yaml"
    bad.write_text("temporal: [flow_propagation]\n")
    assert main(["edit", "x.mp4", "-t", "y", "-o", "o.mp4", "--config", str(bad)]) == 2
    assert "temporal must map module names to their options" in capsys.readouterr().err
