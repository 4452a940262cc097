"""RAFT flow (torchvision's raft_large / raft_small from a local state dict) through
compute_flows, and every flow consumer taking it: metrics and ``videdit eval``,
flow_propagation (its own flow options), the keyframes stages (keyframe_flow, pixels_warp,
pixels_guided: a ``flow`` mapping), rerender (its ``flow`` mapping), from Python, the CLI's
--temporal and a YAML config. The networks have random weights (no hub here): the tests check
the plumbing (padding, order, cache keys, which consumer asked), not the flow's quality."""

import dataclasses

import numpy as np
import pytest
import torch
import yaml

from videdit import io
from videdit.cli import _temporal, main
from videdit.errors import VideditError
from videdit.metrics.temporal import warp_error
from videdit.pipeline import EditSettings, edit_frames
from videdit.toy import sample_clip
from videdit.video import flow as fl
from videdit.video.flow import FlowConfig, compute_flows, flow_key

from tests.video.clips import SOURCE, TARGET, sliding_texture, texture


@pytest.fixture(scope="module")
def builders():
    try:
        return fl._torchvision_raft()
    except VideditError as e:
        pytest.skip(f"RAFT needs torchvision importable beside this torch: {e}")
    except Exception as e:  # noqa: BLE001 - any other failure of the optional dependency
        pytest.skip(f"RAFT needs torchvision importable beside this torch: {e}")


def save_weights(builders, path, kind="small", seed=0):
    large, small = builders
    torch.manual_seed(seed)
    torch.save((large if kind == "large" else small)(weights=None).state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def weights(builders, tmp_path_factory):
    return save_weights(builders, tmp_path_factory.mktemp("raft") / "raft_small.pth")


class Calls(list):
    """(frames' shape, FlowConfig) of each RAFT estimate, and in ``devices`` the device it was given."""

    def __init__(self):
        super().__init__()
        self.devices = []


@pytest.fixture
def spy(monkeypatch):
    calls = Calls()
    real = fl._raft

    def raft(frames, config, device):
        calls.append((frames.shape, config))
        calls.devices.append(device)
        return real(frames, config, device)

    monkeypatch.setattr(fl, "_raft", raft)
    return calls


def test_raft_flows_are_torchvision_on_padded_frames(builders, weights):
    """60x76 frames are padded to 128x128 (multiples of 8, RAFT's 128-pixel minimum), run as
    (a, b) and (b, a) in [-1, 1], and cropped back: equal to calling the network directly."""
    frames = np.stack([np.roll(texture((60, 76, 3), 0, 255), 3 * i, 0) for i in range(3)])
    cfg = FlowConfig(method="raft", raft_weights=weights, raft_updates=3)
    flows = compute_flows(frames, cfg)
    assert flows.forward.shape == flows.backward.shape == (2, 60, 76, 2)
    assert flows.occlusion.shape == flows.occlusion_backward.shape == (2, 60, 76)
    net = fl.raft_network(weights)
    assert net.mask_predictor is None                         # a small model's keys -> raft_small
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    x = torch.nn.functional.pad(x, (0, 128 - 76, 0, 128 - 60), mode="replicate")
    with torch.no_grad():
        ref = net(x[[0, 1, 1, 2]], x[[1, 0, 2, 1]], num_flow_updates=3)[-1][..., :60, :76].permute(0, 2, 3, 1)
    # RAFT's 12 recurrent updates carry rounding: measured 1.1e-5 at 2 of 18240 values (torch 2.14.1)
    np.testing.assert_allclose(flows.forward, ref[[0, 2]].numpy(), atol=1e-4)
    np.testing.assert_allclose(flows.backward, ref[[1, 3]].numpy(), atol=1e-4)
    assert np.abs(flows.forward).max() > 1e-3                # random weights still move something


def test_raft_large_or_small_by_the_state_dict(builders, tmp_path):
    large = save_weights(builders, tmp_path / "large.pth", "large")
    assert fl.raft_network(large).mask_predictor is not None
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(VideditError, match="not a torchvision RAFT state dict"):
        fl.raft_network(str(tmp_path / "other.pth"))
    state = torch.load(large, weights_only=True)
    state.pop("mask_predictor.conv.weight")
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(VideditError, match="do not fit torchvision's raft_large"):
        fl.raft_network(str(tmp_path / "broken.pth"))
    with pytest.raises(VideditError, match="raft_updates"):
        FlowConfig(raft_updates=0)


def test_raft_cache_key_has_the_method_and_the_weights_file(builders, tmp_path, spy):
    frames = sliding_texture(2)
    path = tmp_path / "raft.pth"
    cfg = FlowConfig(method="raft", raft_weights=save_weights(builders, path, seed=0), raft_updates=2)
    first = compute_flows(frames, cfg, cache_dir=tmp_path / "cache")
    again = compute_flows(frames, cfg, cache_dir=tmp_path / "cache")
    assert not first.cached and again.cached and len(spy) == 1
    np.testing.assert_array_equal(first.forward, again.forward)
    key = flow_key(frames, cfg)
    assert key != flow_key(frames, dataclasses.replace(cfg, method="dis"))
    assert key != flow_key(frames, dataclasses.replace(cfg, raft_updates=3))
    save_weights(builders, path, seed=1)                      # other weights at the same path
    assert flow_key(frames, cfg) != key
    other = compute_flows(frames, cfg, cache_dir=tmp_path / "cache")
    assert not other.cached and len(spy) == 2
    assert np.abs(other.forward - first.forward).max() > 1e-4
    # raft_updates is no part of DIS's key (keys from before it existed stay valid)
    assert flow_key(frames, FlowConfig()) == flow_key(frames, FlowConfig(raft_updates=5))


def test_metrics_and_eval_take_raft(weights, tmp_path, spy, capsys):
    """``videdit eval --flow raft --flow-param raft_weights=PATH`` scores along RAFT's flow."""
    clip = sample_clip(0, "translate", 4).frames
    path = tmp_path / "clip.mp4"
    io.write_video(path, clip, 8)
    source = io.read_clip(path)[0]
    report = tmp_path / "scores.json"
    code = main(["eval", str(path), str(path), "--flow", "raft", "--flow-param", f"raft_weights={weights}",
                 "--flow-param", "raft_updates=2", "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    assert [shape for shape, _ in spy] == [(4, 64, 64, 3)]
    cfg = FlowConfig(method="raft", raft_weights=weights, raft_updates=2)
    expected = warp_error(source, compute_flows(source, cfg))
    assert yaml.safe_load(report.read_text())["source_warp_error"] == pytest.approx(expected, rel=1e-6)


def edit(tiny, temporal, n=4):
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2, guidance=3.0, temporal=temporal)
    return edit_frames(tiny, sliding_texture(n), s)


def test_flow_propagation_takes_raft(tiny, weights, spy):
    out = edit(tiny, {"flow_propagation": {"method": "raft", "raft_weights": weights, "raft_updates": 2,
                                              "start": 0.0}})
    assert out.shape == (4, 64, 64, 3)
    assert [shape for shape, _ in spy] == [(4, 64, 64, 3)]   # the window's flow, once for both steps
    assert spy.devices == [tiny.device]                      # RAFT runs where the model does


@pytest.mark.parametrize("stage", ["keyframe_flow", "pixels_warp", "pixels_guided"])
def test_keyframe_stages_take_raft(tiny, weights, spy, stage):
    """Keyframes 0 and 3 of 4 frames: frames 1 and 2 each pair with both, one RAFT estimate a pair."""
    raft = {"method": "raft", "raft_weights": weights, "raft_updates": 2}
    temporal = {"keyframes": {"every": 3}, "keyframe_flow": {}, stage: {"flow": raft}}
    edit(tiny, temporal)
    assert len(spy) == 4 and {shape for shape, _ in spy} == {(2, 64, 64, 3)}
    assert {cfg.raft_updates for _, cfg in spy} == {2} and set(spy.devices) == {tiny.device}


def test_rerender_takes_raft(tiny, weights, spy):
    """rerender's flow: RAFT under the official occlusion test (no photometric test, no dilation)."""
    s = EditSettings(source_prompt="a", target_prompt="a red square", guidance=3.0, inversion="sdedit", steps=2,
                     temporal={"rerender": {"interval": 5, "flow": {"method": "raft", "raft_weights": weights,
                                                                "raft_updates": 2}}})
    edit_frames(tiny, sample_clip(0, "translate", 3).frames, s, temporal=s.temporal_stack(), last=True)
    assert spy and {shape for shape, _ in spy} == {(2, 64, 64, 3)}
    assert {(cfg.method, cfg.photometric, cfg.dilate) for _, cfg in spy} == {("raft", None, 0)}
    assert tiny.device in spy.devices        # the keyframes' pairs (the frames between: on the CPU, device None)


def test_cli_and_yaml_give_raft_to_the_modules(tiny, weights, tmp_path, spy, capsys):
    """--temporal's options (a module's own, or a flow mapping) and a YAML config reach the modules."""
    for text, method in [(f"rerender:flow={{method: raft, raft_weights: {weights}}}", "raft"),
                         (f"flow_propagation:method=raft,raft_weights={weights}", "raft")]:
        name, options = _temporal(text)
        module = EditSettings(temporal={name: options}).temporal_stack().modules[0]
        config = module.flow if name != "flow_propagation" else module.config.flow_config()
        assert (config.method, config.raft_weights) == (method, weights)
    path = tmp_path / "clip.mp4"
    io.write_video(path, sample_clip(0, "translate", 4).frames, 8)
    config = tmp_path / "raft.yaml"
    config.write_text(yaml.safe_dump({"temporal": {"flow_propagation": {"method": "raft", "raft_weights": weights,
                                                                        "start": 0.0}}}))
    code = main(["edit", str(path), "-t", "a red square", "-o", str(tmp_path / "out.mp4"), "--model",
                 "tiny-random", "--steps", "2", "--no-cache", "-q", "--size", "source", "--config", str(config)])
    assert code == 0, capsys.readouterr().err
    assert [shape for shape, _ in spy] == [(4, 64, 64, 3)]


def test_tables_give_the_flow_to_every_mechanism(monkeypatch):
    """tools/tables.py temporal --flow/--flow-param: every module of every mechanism that reads a
    flow gets the options (a flow mapping, or flow_propagation's own fields); the rest are untouched."""
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "tools"))
    monkeypatch.delitem(sys.modules, "tables", raising=False)
    import tables

    options = {"colour": "gray", "preset": "fast"}
    readers = 0
    for name, temporal in tables.MECHANISMS.items():
        given = tables.with_flow(temporal, options)
        assert list(given) == list(temporal)
        for module, opts in given.items():
            if module in tables.FLOW_MAPPING:
                assert opts["flow"] == {**dict(temporal[module].get("flow") or {}), **options}
                readers += 1
            elif module == "flow_propagation":
                assert opts == {**temporal[module], **options}
                readers += 1
            else:
                assert opts == dict(temporal[module] or {})
        EditSettings(editor="prompt_to_prompt", temporal=given).temporal_stack()   # valid where they land
    assert readers >= 5
