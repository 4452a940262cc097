"""The toy world: determinism, ground truth against pixels, captions, flow, and the scorers on world images."""

import hashlib

import cv2
import numpy as np
import pytest

from videdit.errors import VideditError
from videdit.toy import (
    BACKGROUND_COLOURS,
    CAPTION_WORDS,
    CLIP_KINDS,
    OBJECT_COLOURS,
    SHAPES,
    WorldConfig,
    WorldObject,
    make_scene,
    sample_clip,
    sample_scene,
    sample_scenes,
)
from videdit.toy.scores import (
    background_psnr,
    classify_background,
    classify_colour,
    classify_shape,
    detect_objects,
    mask_iou,
    psnr,
    recoloured,
    score_image,
)


@pytest.fixture(scope="module")
def scenes():
    return sample_scenes(123, 200)


def test_same_seed_same_scene_and_clip():
    a, b = sample_scene(7), sample_scene(7)
    assert a.caption == b.caption and np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(sample_scene(8).image, a.image)
    c, d = sample_clip(3, "occlude"), sample_clip(3, "occlude")
    assert np.array_equal(c.frames, d.frames) and np.array_equal(c.flows, d.flows)


def test_size_is_a_parameter():
    s = sample_scene(0, WorldConfig(size=32))
    assert s.image.shape == (32, 32, 3) and s.masks.shape[1:] == (32, 32)
    with pytest.raises(VideditError):
        WorldConfig(size=31)


def test_overlap_prob_hides_part_of_the_back_object():
    """With ``overlap_prob`` the second object covers part of the first (the toy occlusion
    clips' situation); without it objects never touch, and scenes keep their seeds."""
    from videdit.toy.world import object_coverage

    overlapping = WorldConfig(two_object_prob=1.0, overlap_prob=1.0)
    hidden = []
    for seed in range(100):
        s = sample_scene(seed, overlapping)
        back = s.objects[0]
        hidden.append(1 - s.coverage[0].sum() / object_coverage(back, 64).sum())
        assert s.masks[0].sum() > 30 and s.masks[1].sum() > 30            # both still visible
    assert np.median(hidden) > 0.05 and max(hidden) < 0.65   # measured: median 0.10, max 0.52
    for seed in range(100):
        s = sample_scene(seed, WorldConfig(two_object_prob=1.0))
        assert not ((s.coverage[0] > 0) & (s.coverage[1] > 0)).any()
    # overlap_prob 0 draws no extra random number: scenes are those of before the option existed
    # (this hash is of the images commit 6c68fa2 made); any overlap_prob > 0 draws one and moves them
    def digest(config):
        return hashlib.sha1(np.stack([s.image for s in sample_scenes(123, 50, config)]).tobytes()).hexdigest()[:16]

    assert digest(WorldConfig(two_object_prob=0.5)) == "aa809c86bb9af4e3"
    assert digest(WorldConfig(two_object_prob=0.5, overlap_prob=1e-9)) != "aa809c86bb9af4e3"
    with pytest.raises(VideditError, match="overlap_prob"):
        WorldConfig(overlap_prob=1.5)


def test_recoloured_never_asks_for_the_back_objects_colour():
    """A toy-clip colour edit takes the front object to the next palette colour that no object
    has: seed 7's purple triangle over an orange circle becomes red, not orange (which would
    merge it into the circle); one-object clips take the plain next colour."""
    prompt, colour = recoloured(sample_clip(np.random.default_rng(7), "occlude", 4))
    assert colour == "red" and prompt == "a orange circle and a red triangle on a black background"
    for seed in range(12):
        clip = sample_clip(np.random.default_rng(seed), "occlude", 4)
        assert recoloured(clip)[1] not in {o.colour for o in clip.objects}
    one = sample_clip(0, "translate", 4)
    palette = list(OBJECT_COLOURS)
    assert recoloured(one)[1] == palette[(palette.index(one.objects[0].colour) + 1) % len(palette)]


def test_masks_match_pixels(scenes):
    for s in scenes:
        assert s.image.dtype == np.uint8 and s.masks.dtype == bool
        assert s.masks.shape == (len(s.objects), 64, 64)
        assert not np.logical_and(s.masks[0], s.masks[-1]).any() or len(s.objects) == 1
        for k, o in enumerate(s.objects):
            assert s.masks[k].sum() > 30
            # fully covered pixels have exactly the object's colour
            full = s.coverage[k] > 0.999
            assert np.abs(s.image[full].astype(int) - o.rgb).max() <= 1
        # pixels outside every object (coverage 0) are pure background
        bg = (s.coverage.sum(0) == 0)
        bg_colours = {tuple(c) for c in s.image[bg].reshape(-1, 3)}
        assert bg_colours <= {BACKGROUND_COLOURS[b] for b in s.background}


def test_edges_are_antialiased():
    s = make_scene((WorldObject("circle", "red", (32.3, 31.7), 12.0),), ("black",))
    levels = np.unique(s.image[..., 0])
    assert len(levels) > 10  # intermediate edge values, not a binary shape


def test_captions_use_the_vocabulary(scenes):
    words = set(CAPTION_WORDS)
    n_two = 0
    for s in scenes:
        assert set(s.caption.split()) <= words
        for o in s.objects:
            assert f"{o.colour} {o.shape}" in s.caption
        assert s.caption.endswith(f"on a {s.background_label} background")
        n_two += len(s.objects) == 2
    assert 0.2 < n_two / len(scenes) < 0.5
    assert {o.colour for s in scenes for o in s.objects} == set(OBJECT_COLOURS)
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)
    assert {s.background_label for s in scenes} >= set(BACKGROUND_COLOURS)


def test_scorers_are_exact_on_world_images(scenes):
    n = colour_ok = shape_ok = 0
    ious = []
    for s in scenes:
        assert classify_background(s.image) == s.background_label
        found = detect_objects(s.image)
        assert len(found) == len(s.objects)
        for k, o in enumerate(s.objects):
            n += 1
            colour_ok += classify_colour(s.image, s.masks[k]) == o.colour
            shape_ok += classify_shape(s.masks[k]) == o.shape
            best = max(found, key=lambda d: mask_iou(d.mask, s.masks[k]))
            ious.append(mask_iou(best.mask, s.masks[k]))
            assert (best.colour, best.shape) == (o.colour, o.shape)
    assert colour_ok == n and shape_ok == n
    assert np.mean(ious) > 0.98 and min(ious) > 0.9
    one = next(s for s in scenes if len(s.objects) == 1)
    o = one.objects[0]
    sc = score_image(one.image, o.colour, o.shape, one.background_label)
    assert sc.colour_ok and sc.shape_ok and sc.background_ok


def test_psnr_and_background_psnr():
    s = make_scene((WorldObject("square", "blue", (20.0, 20.0), 8.0),), ("gray",))
    t = make_scene((WorldObject("square", "green", (20.0, 20.0), 8.0),), ("gray",))
    assert psnr(s.image, s.image) == float("inf")
    assert psnr(s.image, t.image) < 25
    assert background_psnr(s.image, t.image, s.masks) == float("inf")  # only the object changed
    noisy = np.clip(s.image.astype(int) + 5, 0, 255).astype(np.uint8)
    assert abs(background_psnr(s.image, noisy, s.masks) - 20 * np.log10(255 / 5)) < 0.1


@pytest.mark.parametrize("kind", CLIP_KINDS)
def test_flow_warps_next_frame_onto_current(kind):
    clip = sample_clip(5, kind, n_frames=6)
    t_, h, w = clip.frames.shape[:3]
    assert clip.flows.shape == (t_ - 1, h, w, 2) and clip.occlusions.shape == (t_ - 1, h, w)
    assert clip.masks.shape == (t_, len(clip.objects), h, w)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    moving = 0.0
    for t in range(t_ - 1):
        f = clip.flows[t]
        warped = cv2.remap(
            clip.frames[t + 1].astype(np.float32), xs + f[..., 0], ys + f[..., 1], cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        err = np.abs(warped - clip.frames[t]).max(-1)[~clip.occlusions[t]]  # (n_visible,)
        assert err.mean() < 1.5 and np.percentile(err, 95) < 3.0
        # without the flow the frames differ on the moving object
        moving += np.abs(clip.frames[t + 1].astype(int) - clip.frames[t]).max(-1).mean()
        assert np.abs(f[~clip.masks[t].any(0)]).max() == 0  # the background is static
    assert moving > 0
    if kind == "occlude":
        assert clip.occlusions.any()
        # the back object loses visible area while the front one passes over it
        area = clip.masks[:, 0].sum((1, 2))
        assert area.min() < area[0]


def test_bad_input_raises():
    with pytest.raises(VideditError):
        WorldObject("hexagon", "red", (0.0, 0.0), 1.0)
    with pytest.raises(VideditError):
        sample_clip(0, "shear")
    with pytest.raises(VideditError):
        classify_colour(np.zeros((8, 8, 3), np.float32), np.ones((8, 8), bool))
