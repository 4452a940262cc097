"""The toy world: determinism, ground truth against pixels, captions, flow."""

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
from videdit.toy.scores import classify_colour


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


def test_depth_maps_are_the_objects_silhouettes_nearest_in_front():
    """Inverse depth (near bright, as MiDaS): a floor ramp 0 -> 60 down the rows, the front object 255
    and the one behind it 190, on exactly the visible object pixels of every frame."""
    clip = sample_clip(np.random.default_rng(4), "occlude", 5)
    depth = clip.condition("depth")
    assert depth.shape == clip.frames.shape and depth.dtype == np.uint8
    assert (depth[..., 0] == depth[..., 2]).all()
    for t in range(len(depth)):
        back, front = clip.masks[t]
        d = depth[t, ..., 0].astype(int)
        assert np.median(d[front]) == 255 and np.median(d[back]) == 190
        floor = cv2.dilate((back | front).astype(np.uint8), np.ones((3, 3), np.uint8)) == 0   # off the edges
        assert d[floor].max() <= 60 and d[0][floor[0]].max() <= 1 and d[-1][floor[-1]].min() >= 59
        assert ((d >= 125) == (back | front)).mean() > 0.99


@pytest.mark.parametrize("shape,limbs", [("circle", 8), ("square", 4), ("triangle", 3)])
def test_pose_maps_draw_a_skeleton_of_limbs_from_the_centre(shape, limbs):
    """One limb from the centre to each corner (a circle: 8 points of its rim), in OpenPose's limb
    colours, a white joint at the centre; nothing of the object's fill or colour."""
    from videdit.toy.world import pose_map, skeleton

    obj = WorldObject(shape, "red", (32.0, 32.0), 12.0, 10.0 if shape != "circle" else 0.0)
    assert len(skeleton(obj)) == limbs
    pose = pose_map((obj,), 64)
    assert pose[32, 32].min() >= 200                       # the white centre joint
    for end in skeleton(obj):                                # each limb's end is drawn
        x, y = np.floor(end).astype(int)
        assert pose[y - 1:y + 2, x - 1:x + 2].max() >= 200
    covered = pose.max(-1) > 40
    mask = make_scene((obj,), ("gray",)).masks[0]
    assert covered.sum() < 0.5 * mask.sum()                  # limbs, not the filled shape
    assert len({tuple(c) for c in pose[covered & (pose.max(-1) >= 250)].tolist()}) >= 3
