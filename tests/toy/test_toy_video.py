"""Issue 6's toy check on moving-shape clips: a colour edit made with keyframes keeps the
flow warp error, along the clip's ground-truth flow, within 1.5x of the source clip's own and
at least 2x below independent per-frame editing, and succeeds on every frame. Two ways: flow
propagation and guided pixels (DiffEdit on DDIM inversion, keep_background; the settings of
``tools/tables.py toy-video --keep-background 0.3 --inversion ddim --editor diffedit``, its
clips 0 and 2), and the bilateral grid of colour maps (that table's defaults)."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from videdit.metrics.temporal import warp_error
from videdit.models import load_model
from videdit.pipeline import edit_video
from videdit.toy import sample_clip
from videdit.toy.scores import clip_flows, clip_frame_success, recoloured

TOY = Path(__file__).resolve().parents[2] / "videdit" / "toy" / "model"
pytestmark = pytest.mark.skipif(not (TOY / "model_index.json").exists(), reason="toy model not exported")
GUIDED = {"keyframes": {"every": 4, "propagation": "flow", "pixels": "guided"}}


@pytest.fixture(scope="module")
def toy():
    return load_model("toy")


def check(toy, folder, seed, kind, temporal, **settings):
    """The issue's check on toy clip ``seed`` of ``kind`` (16 frames): the edit made with
    ``temporal`` has warp error, along the clip's exact flow, within 1.5x of the source's and
    at least 2x below independent editing with the same ``settings``, on every frame edited."""
    clip = sample_clip(np.random.default_rng(seed), kind, 16)
    for t, f in enumerate(clip.frames):
        cv2.imwrite(str(folder / f"{t:04d}.png"), f[..., ::-1])
    prompt, colour = recoloured(clip)
    gt = clip_flows(clip)
    edited = {name: edit_video(folder, source_prompt=clip.caption, target_prompt=prompt, model=toy, steps=25,
                               guidance=4.0, window=8, temporal=t, cache_dir=folder / "cache", **settings).frames
              for name, t in (("independent", {}), ("temporal", temporal))}
    errors = {name: warp_error(frames, gt) for name, frames in edited.items()}
    source = warp_error(clip.frames, gt)
    assert errors["temporal"] <= 1.5 * source, (errors, source)
    assert errors["temporal"] * 2 <= errors["independent"], errors
    hits = [clip_frame_success(f, clip, t, colour) for t, f in enumerate(edited["temporal"])]
    assert all(hits), hits


# with -m slow (about 20 s a clip): the default suite checks guided pixels' mechanics on tiny-random
# (tests/video/test_pixels_guided.py) and this property with bilateral pixels below
@pytest.mark.slow
@pytest.mark.parametrize("seed, kind", [(2, "rotate"), (0, "translate")])
def test_guided_keyframes_hold_a_colour_edit_to_the_source_motion(toy, tmp_path, seed, kind):
    """DiffEdit as videdit ran it before following diffusers: from its mask's noise level
    (strength 0.5) with the paper's aligned blend (at diffusers' strength 0.8 and blend the
    rotate clip's warp error is 2.6x the source's: the background is re-generated from further
    up). By default the clip closest to the bound (rotate), with -m slow translate too. Measured:
    translate 0.420 against source 0.376 (1.12x) and independent 0.883; rotate 0.373 against
    0.254 (1.47x) and independent 1.192."""
    check(toy, tmp_path, seed, kind, GUIDED, inversion="ddim", editor="diffedit", keep_background={"threshold": 0.3},
          strength=0.5, editor_params={"aligned_blend": True})


BILATERAL = {"keyframes": {"every": 4, "pixels": "bilateral"}}


# with -m slow, every clip (25-50 s a clip): the default suite was at its 10-minute bound; it keeps bilateral
# pixels' mechanics on tiny-random (tests/video/test_pixels_bilateral.py)
@pytest.mark.slow
@pytest.mark.parametrize("seed, kind", [(1, "scale"), (0, "translate"), (2, "rotate"), (3, "occlude"), (4, "translate"),
                                        (5, "scale"), (6, "rotate"), (7, "occlude")])
def test_bilateral_keyframes_hold_a_colour_edit_to_the_source_motion(toy, tmp_path, seed, kind):
    """The check with ``tools/tables.py toy-video --clips 8``'s defaults (direct inversion,
    prompt-to-prompt, guidance 4, window 8), the colour edit as a word swap (``mode:
    replace``), and pixels='bilateral', clips 0-7 (clip 1 the closest to the bound: 2.1x below
    independent editing). Measured, warp error x the
    source's / x below independent: translate 1.1 / 7.5, scale 0.8 / 2.1, rotate 0.8 / 18.2,
    occlude 0.8 / 34.1, translate 0.8 / 3.7, scale 0.9 / 7.8, rotate 0.5 / 5.5, occlude 0.6 /
    33.3 (seeds 0-7), every frame edited."""
    check(toy, tmp_path, seed, kind, BILATERAL, inversion="direct", editor="prompt_to_prompt",
          editor_params={"mode": "replace"})
