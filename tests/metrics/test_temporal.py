"""Temporal scores: flow warp error along the source's flow, flicker, chunked accumulation,
and the `videdit eval` command."""

import json

import numpy as np
import pytest

from videdit import io
from videdit.cli import main
from videdit.errors import VideditError
from videdit.metrics import TemporalMeter, flicker, temporal_report, warp_error, warp_errors
from videdit.toy import sample_clip
from videdit.video.flow import compute_flows


def _noisy(frames, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(frames + rng.normal(0, sigma, frames.shape), 0, 255).round().astype(np.uint8)


def test_warp_error_of_the_source_is_small_and_noise_raises_it():
    """Measured on toy "translate" seed 0 (DIS flow): source 0.03; with per-frame noise of
    std 10: 9.0 (unclipped noise would give E|N(0, 10) - N(0, 10)| = 11.3; the white
    background clips it)."""
    clip = sample_clip(0, "translate", 8)
    flows = compute_flows(clip.frames)
    own = warp_error(clip.frames, flows)
    noisy = warp_error(_noisy(clip.frames, 10), flows)
    assert own < 1.0
    assert 7 < noisy < 13
    per_pair = warp_errors(clip.frames, flows)
    assert per_pair.shape == (7,) and per_pair.max() < 1.5
    with pytest.raises(VideditError, match="does not fit"):
        warp_errors(clip.frames[:5], flows)


def test_an_edit_that_moves_with_the_source_scores_like_it():
    """Recolouring every frame the same way (RGB -> BGR) keeps the warp error at the source's
    level (the ratio is 1: the error is a mean over channels); a pulsing edit does not."""
    clip = sample_clip(2, "occlude", 8)
    steady = np.ascontiguousarray(clip.frames[..., ::-1])
    report = temporal_report(clip.frames, steady)
    assert report["warp_error_ratio"] == pytest.approx(1.0, abs=1e-3) and report["flicker"] < 0.5
    pulsing = np.clip(clip.frames.astype(int) + np.where(np.arange(8) % 2, 20, -20)[:, None, None, None],
                      0, 255).astype(np.uint8)
    bad = temporal_report(clip.frames, pulsing)
    assert bad["warp_error_ratio"] > 10 and bad["flicker"] > 20


def test_flicker():
    rng = np.random.default_rng(1)
    base = rng.integers(60, 180, (6, 16, 16, 3)).astype(np.uint8)
    assert flicker(base, base) == 0
    pulse = base + np.where(np.arange(6) % 2, 10, 0).astype(np.uint8)[:, None, None, None]
    assert flicker(pulse, base) == pytest.approx(10, abs=1e-6)       # every change off by 10
    still = np.repeat(base[:1], 6, axis=0)
    assert flicker(still) == 0 and flicker(pulse[:2]) > 0
    with pytest.raises(VideditError, match="at least 2 frames"):
        flicker(base[:1])


def test_chunks_add_up_to_the_whole_clip():
    clip = sample_clip(1, "scale", 9)
    edit = _noisy(clip.frames, 5)
    whole = temporal_report(clip.frames, edit)
    meter = TemporalMeter()
    for i in range(0, 9, 4):
        meter.update(clip.frames[i:i + 4], edit[i:i + 4])
    parts = meter.report()
    for k in ("warp_error", "source_warp_error", "flicker", "visible_fraction"):
        assert parts[k] == pytest.approx(whole[k], rel=1e-5)
    assert parts["frames"] == 9
    with pytest.raises(VideditError, match="same frames and size"):
        meter.update(clip.frames[:2], edit[:3])
    with pytest.raises(VideditError, match="at least 2 frames"):
        TemporalMeter().report()


def test_eval_command(tmp_path, capsys):
    clip = sample_clip(0, "translate", 8)
    original, edited = tmp_path / "original", tmp_path / "edited.mp4"
    io.write_frames_dir(original, clip.frames)
    io.write_video(edited, _noisy(clip.frames, 8), 8)
    report = tmp_path / "scores.json"
    assert main(["eval", str(original), str(edited), "--report", str(report), "-q"]) == 0
    out = capsys.readouterr().out
    scores = json.loads(report.read_text())
    assert scores["frames"] == 8 and scores["warp_error"] > 3 * scores["source_warp_error"]
    assert f"warp error {scores['warp_error']:.3f}" in out and f"ratio {scores['warp_error_ratio']:.2f}" in out
    assert main(["eval", str(original), str(original), "--flow", "farneback", "-q"]) == 0
    assert "ratio 1.00" in capsys.readouterr().out
    assert main(["eval", str(original), str(edited), "--max-frames", "5", "-q"]) == 2
    assert "gives 5 frames (as read) but" in capsys.readouterr().err
    assert main(["eval", str(original), str(edited), "--flow-param", "preset=slow", "-q"]) == 2
    assert "unknown DIS preset" in capsys.readouterr().err
