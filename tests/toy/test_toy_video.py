"""Issue 6's toy check on one-object moving-shape clips: a colour edit made with keyframes,
flow propagation and guided pixels (DiffEdit on DDIM inversion, keep_background) keeps the
flow warp error, along the clip's ground-truth flow, within 1.5x of the source clip's own and
at least 2x below independent per-frame editing, and succeeds on every frame. The same
settings as ``tools/toy_video_table.py --keep-background 0.3 --inversion ddim --editor diffedit``
(seeds: that table's clips 0 and 2)."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from videdit.metrics.temporal import warp_error
from videdit.models import load_model
from videdit.pipeline import edit_video
from videdit.toy import sample_clip
from videdit.toy.scores import clip_flows, clip_frame_success, recoloured

TOY = Path(__file__).resolve().parents[2] / "samples" / "toy-model"
pytestmark = pytest.mark.skipif(not (TOY / "model_index.json").exists(), reason="toy model not exported")
GUIDED = {"keyframes": {"every": 4, "propagation": "flow", "pixels": "guided"}}


@pytest.fixture(scope="module")
def toy():
    return load_model("toy")


@pytest.mark.parametrize("seed, kind", [(0, "translate"), (2, "rotate")])
def test_guided_keyframes_hold_a_colour_edit_to_the_source_motion(toy, tmp_path, seed, kind):
    clip = sample_clip(np.random.default_rng(seed), kind, 16)
    for t, f in enumerate(clip.frames):
        cv2.imwrite(str(tmp_path / f"{t:04d}.png"), f[..., ::-1])
    prompt, colour = recoloured(clip)
    gt = clip_flows(clip)
    edited = {name: edit_video(tmp_path, source_prompt=clip.caption, target_prompt=prompt, model=toy, steps=25,
                               guidance=4.0, inversion="ddim", editor="diffedit", window=8, temporal=temporal,
                               keep_background={"threshold": 0.3}, cache_dir=tmp_path / "cache").frames
              for name, temporal in (("independent", {}), ("guided", GUIDED))}
    errors = {name: warp_error(frames, gt) for name, frames in edited.items()}
    source = warp_error(clip.frames, gt)
    # measured: translate 0.420 against source 0.376 (1.12x) and independent 0.883;
    #           rotate 0.373 against 0.254 (1.47x) and independent 1.192
    assert errors["guided"] <= 1.5 * source, (errors, source)
    assert errors["guided"] * 2 <= errors["independent"], errors
    hits = [clip_frame_success(f, clip, t, colour) for t, f in enumerate(edited["guided"])]
    assert all(hits), hits
