"""The toy scorers: exact on world images, and on hand-made masks and images."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from videdit.toy import OBJECT_COLOURS, WorldObject, make_scene, sample_clip
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
    score_multi,
    shape_fill_ratio,
)

TOY = Path(__file__).resolve().parents[2] / "videdit" / "toy" / "model"


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


def test_mask_iou_and_psnr_on_hand_made_cases():
    a, b = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    a[:2], b[1:3] = True, True                                  # 8 and 8 pixels, 4 shared
    assert mask_iou(a, b) == pytest.approx(4 / 12) and mask_iou(a, a) == 1.0 and mask_iou(a & False, b & False) == 1.0
    x = np.zeros((2, 2, 3), np.uint8)
    y = x.copy()
    y[0, 0] = 10                                                # mse = 100 * 3 / 12 = 25
    assert psnr(x, y) == pytest.approx(10 * np.log10(255 ** 2 / 25))
    assert psnr(x, y, where=np.array([[False, True], [True, True]])) == float("inf")


def test_shape_fill_ratio_and_score_multi():
    yy, xx = np.mgrid[:41, :41]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 15 ** 2
    square = np.zeros((41, 41), bool)
    square[10:31, 10:31] = True
    assert shape_fill_ratio(disc) > 0.9 and classify_shape(disc) == "circle"
    assert shape_fill_ratio(square) == pytest.approx(2 / np.pi, abs=0.05) and classify_shape(square) == "square"
    s = make_scene((WorldObject("square", "blue", (20.0, 20.0), 8.0), WorldObject("circle", "red", (44.0, 44.0), 8.0)),
                   ("gray",))
    assert score_multi(s.image, ("blue", "red"), ("square", "circle")) == (1.0, 1.0)
    assert score_multi(s.image, ("blue", "green"), ("circle", "circle")) == (0.5, 0.0)


def _vae_round_trip(vae, frames: np.ndarray) -> np.ndarray:
    import torch

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        y = vae.decode(vae.encode(x).latent_dist.mean).sample
    return ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.mark.skipif(not (TOY / "model_index.json").exists(), reason="toy model not exported")
def test_shapes_read_in_place_survive_the_toy_vae():
    """The toy clips' success test reads the shape in place: the toy VAE's round trip rounds
    corners, and the enclosing-circle fill ratio then reads some triangles as squares (fill
    0.46-0.56 against the cut 0.525). The presets table's clips 0-2 (seeds 0-2: translate, scale,
    rotate; 12 frames), their front object drawn as each shape in the asked colour, encoded and
    decoded: in place every frame reads as the shape drawn, by an IoU margin of at least 0.05 over
    the next shape (measured: squares 0.09, circles 0.10, triangles 0.20), where the fill ratio misreads triangles
    (measured: 3 of the 36); clip_frame_success passes each clip's own shape and fails the
    others, and fails the source's colour."""
    from videdit.models import load_model
    from videdit.toy import SHAPES
    from videdit.toy.scores import classify_shape_in_place, clip_frame_success, shape_fits
    from videdit.toy.world import render

    vae = load_model("toy").vae
    read = misread = 0
    margins = {}
    for seed, kind in enumerate(("translate", "scale", "rotate")):
        clip = sample_clip(np.random.default_rng(seed), kind, 12)
        colour = recoloured(clip)[1]
        for shape in SHAPES:
            drawn = [dataclasses.replace(clip.objects_at(t)[0], shape=shape, colour=colour) for t in range(12)]
            frames = _vae_round_trip(vae, np.stack([render((o,), clip.background, 64)[0] for o in drawn]))
            for t, (frame, obj) in enumerate(zip(frames, drawn)):
                mask = detect_objects(frame)[0].mask
                fits = sorted(shape_fits(mask, obj).values())
                margins[shape] = min(margins.get(shape, 1.0), fits[-1] - fits[-2])
                read += classify_shape_in_place(mask, obj) == shape
                misread += shape == "triangle" and classify_shape(mask) != shape
                assert clip_frame_success(frame, clip, t, colour) == (shape == clip.objects[0].shape), (kind, shape, t)
        source = _vae_round_trip(vae, clip.frames)
        assert not any(clip_frame_success(f, clip, t, colour) for t, f in enumerate(source))
    assert read == 108 and min(margins.values()) >= 0.05 and margins["triangle"] >= 0.15, margins
    assert misread >= 1, misread
