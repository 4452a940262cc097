"""ebsynth: guided patch-based synthesis (Ebsynth, as Rerender-A-Video's video_blend.py runs it).
A target that is the keyframe shifted by a known offset comes back as the keyframe's style at
the new position, where warping with a zero flow does not; the error map is low where the
target's patches exist in the keyframe and high where they do not."""

import cv2
import numpy as np
import pytest
import torch

from videdit.errors import VideditError
from videdit.video import ebsynth as eb
from videdit.video.rerender import flow_warp

FAST = eb.EbsynthConfig(search_vote_iters=2, patchmatch_iters=2)
SHIFT = (3, 5)   # rows, columns


def texture(seed: int, size: int = 60) -> np.ndarray:
    """A smooth random colour texture (H, W, 3) uint8: every 5x5 patch tells where it is."""
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (12, 12, 3)).astype(np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)


def stylise(frame: np.ndarray) -> np.ndarray:
    """A 'style' that is a function of the colour: inverted, channels reversed."""
    return np.ascontiguousarray(255 - frame[..., ::-1])


@pytest.fixture(scope="module")
def pair():
    big = texture(0)
    source, target = big[:48, :48], big[SHIFT[0]:SHIFT[0] + 48, SHIFT[1]:SHIFT[1] + 48]
    return source, np.ascontiguousarray(target)


def test_config_and_levels():
    assert (eb.EbsynthConfig().patch_size, eb.EbsynthConfig().search_vote_iters, eb.EbsynthConfig().patchmatch_iters,
            eb.EbsynthConfig().uniformity) == (5, 12, 6, 3500.0)
    assert eb.EbsynthConfig().guide_weights == (6.0, 0.5, 0.5, 2.0)        # video_blend.py: weights = [6, 0.5, 0.5, 2]
    for bad, message in [({"patch_size": 4}, "odd"), ({"search_vote_iters": -1}, "search_vote_iters"),
                         ({"levels": 0}, "levels"), ({"edge_weight": -1}, "edge_weight")]:
        with pytest.raises(VideditError, match=message):
            eb.EbsynthConfig(**bad)
    # ebsynth.cpp: the smaller side halved (level) times stays >= 2 * patch + 1 = 11
    assert eb.pyramid_levels((64, 64), (64, 64), 5) == 3 and eb.pyramid_levels((512, 768), (512, 768), 5) == 6
    assert eb.pyramid_levels((10, 64), (64, 64), 5) == 0
    with pytest.raises(VideditError, match="too small"):
        eb.synthesize(np.zeros((8, 8, 3), np.uint8), [np.zeros((8, 8, 3), np.uint8)],
                      [np.zeros((8, 8, 3), np.uint8)], (1.0,))
    # the guides of blender/guide.py: a Laplacian saturated to 0..255, a ramp red down and green across
    frame = np.zeros((5, 5, 3), np.uint8)
    frame[2, 2] = 100
    assert eb.edges(frame)[2, 2, 0] == 255 and eb.edges(frame)[2, 1, 0] == 0
    ramp = eb.positional_ramp(3, 5)
    assert ramp[:, 0, 0].tolist() == [0, 127, 255] and ramp[0, :, 1].tolist() == [0, 63, 127, 191, 255]


def test_shifted_target_gets_the_style_at_its_new_place(pair):
    """The synthesis of a target shifted by (3, 5) is the keyframe's style shifted, within 3
    levels on average away from the border the source lacks (measured 0.6); the keyframe's style
    warped with a zero flow is off by more than 25 levels (measured 70)."""
    source, target = pair
    style = stylise(source)
    out, error = eb.synthesize(style, [source, eb.edges(source)], [target, eb.edges(target)], (6, 0.5), FAST)
    want = stylise(target).astype(float)
    inner = (slice(2, 40), slice(2, 40))
    synth_err = np.abs(out.astype(float) - want)[inner].mean()
    zero_flow = flow_warp(torch.from_numpy(style).permute(2, 0, 1)[None].float(), torch.zeros(1, 2, 48, 48))
    warp_err = np.abs(zero_flow[0].permute(1, 2, 0).numpy() - want)[inner].mean()
    assert out.shape == target.shape and out.dtype == np.uint8 and error.shape == (48, 48)
    assert synth_err < 3 and warp_err > 25, (synth_err, warp_err)


def test_error_is_low_where_the_match_is_exact(pair):
    """A square of new texture in the target: its pixels' patch errors are over 20x those of
    the shifted rest (measured 3.4e5 against 5.3e3)."""
    source, target = pair
    target = target.copy()
    target[14:30, 14:30] = texture(1)[:16, :16]
    _, error = eb.synthesize(stylise(source), [source], [target], (6,), FAST)
    new = error[18:26, 18:26].mean()
    rest = np.ones_like(error, bool)
    rest[10:34, 10:34] = False
    rest[40:] = rest[:, 40:] = False
    assert new > 20 * error[rest].mean(), (new, error[rest].mean())


def test_exemplar_is_reused_and_seeded(pair):
    """One exemplar for many targets (its levels made once) gives what a fresh one gives; the same seed, the same
    synthesis."""
    source, target = pair
    ex = eb.Exemplar(stylise(source), [source], (6,), FAST)
    first = ex.synthesize([target])
    again = ex.synthesize([target])
    fresh = eb.synthesize(stylise(source), [source], [target], (6,), FAST)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[0], fresh[0])
    assert len(ex._levels) == 3
    with pytest.raises(VideditError, match="one target image per guide"):
        ex.synthesize([target, target])
