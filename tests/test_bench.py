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


def test_the_gpu_checks_presets_are_edit_video_calls_as_the_command_line_reads_them():
    """tools/gpu_check.py times configs/NAME.yaml through `videdit edit --config`'s reading (a key only the CLI
    knows, such as ``tome``, would end its preset rows), ControlNets replaced by its own."""
    import inspect

    import gpu_check   # tools/gpu_check.py

    from videdit.pipeline import edit_video

    signature = inspect.signature(edit_video)
    for name in gpu_check.PRESETS:
        kw = gpu_check.preset_kwargs(name, "/tmp/net")
        signature.bind("in.mp4", model="m", read=None, window=8, use_cache=False, progress=False, **kw)
        assert kw["source_prompt"] == gpu_check.PROMPT and kw["target_prompt"] == gpu_check.TARGET, name
    rerender = gpu_check.preset_kwargs("rerender", "/tmp/net")
    assert [(s.controlnet, s.scale) for s in rerender["control"]] == [("/tmp/net", 0.7)]
    assert gpu_check.preset_kwargs("text2video-zero-ddim", "/tmp/net")["token_merging"] == 0.0
    tokenflow = gpu_check.preset_kwargs("tokenflow", "/tmp/net")
    assert tokenflow["inversion_params"]["inversion_steps"] == 500 and tokenflow["editor"] == "plug_and_play"
