"""``tools/bench.py memory --presets``: every preset it offers resolves to ``edit_video`` keywords on
tiny-random's parts, each ControlNet a preset names replaced by tiny-random's at the preset's scale."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import bench  # noqa: E402  (tools/bench.py)


def test_every_memory_preset_resolves_with_tiny_random_controlnets():
    scales = {}
    for name in bench.PRESET_MEMORY:
        kw = bench.preset_run(name, 2, "tiny-random")
        assert kw["steps"] == 2 and kw["model"] in ("tiny-random", "tiny-pix2pix"), name
        specs = kw.get("control") or []
        assert all(s.controlnet == "tiny-random" for s in specs), name
        scales[name] = [(s.condition.kind, s.scale) for s in specs]
    assert scales["rerender"] == [("canny", 0.7)] and scales["text2video-zero-canny"] == [("canny", 1.0)]
    assert scales["text2video-zero-pose"] == [("pose", 1.0)] and scales["text2video-zero-depth"] == [("depth", 1.0)]
    assert scales["tokenflow"] == scales["fatezero"] == []
