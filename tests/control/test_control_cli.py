"""ControlNet through the command line and edit_video / edit_image: frame counts, pairing and
condition files checked in one line, the inversion cache filled by `videdit invert` reused."""

import cv2
import numpy as np
import pytest

import videdit
from tests.test_cli import BASE, SAMPLE, run
from videdit import io
from videdit import ControlSpec

CONTROL = ["--control", "canny", "--controlnet", "tiny-random"]


def test_edit_with_a_controlnet_writes_every_frame(tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code, stdout, err = run(capsys, "edit", SAMPLE, "-t", "a blue circle", *BASE, *CONTROL, "--max-frames", "5",
                            "--size", "128", "-o", out)
    assert code == 0, err
    assert io.probe(out).n_frames == 5 and "wrote" in stdout


@pytest.mark.parametrize("argv,message", [
    (["--control", "canny"], "1 --control and 0 --controlnet given; the k-th --control pairs with the k-th "
                             "--controlnet, so give as many of each"),
    (["--control", "edges", "--controlnet", "tiny-random"], "--control 'edges': give one of canny, softedge"),
    (["--control", "canny", "--controlnet", "./nowhere"], "no ControlNet at './nowhere'"),
])
def test_bad_control_flags_are_one_line(tmp_path, capsys, argv, message):
    code, _, err = run(capsys, "edit", SAMPLE, "-t", "x", *BASE, *argv, "--max-frames", "2", "-o", tmp_path / "o.mp4")
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o.mp4").exists()


def test_depth_maps_from_a_folder(tmp_path, capsys):
    """A frame folder of maps, read with the clip's frame selection; a folder that runs out
    before the clip's selection does is refused before any ControlNet loads."""
    maps = tmp_path / "depth"
    maps.mkdir()
    for i in range(6):
        cv2.imwrite(str(maps / f"{i:03d}.png"), np.full((40, 40, 3), 30 * i, np.uint8))
    kw = dict(model="tiny-random", steps=2, use_cache=False, target_prompt="a blue circle",
              read=io.ReadOptions(max_frames=3, stride=2, size=128))
    result = videdit.edit_video(SAMPLE, control=[ControlSpec(f"depth={maps}", "tiny-random")], **kw)
    assert result.frames.shape[0] == 3
    code, _, err = run(capsys, "edit", SAMPLE, "-t", "x", *BASE, "--control", f"depth={maps}", "--controlnet",
                       "tiny-random", "--start-frame", "3", "--max-frames", "4", "-o", tmp_path / "o.mp4")
    assert code == 2 and f"--control depth={maps} has 3 frames where the clip has 4" in err


def test_invert_fills_the_cache_the_controlled_edit_reads(tmp_path, capsys):
    cache = ["--cache-dir", tmp_path / "cache", "--model", "tiny-random", "--steps", "2", "-q", "--max-frames", "2",
             "--size", "128"]
    code, stdout, err = run(capsys, "invert", SAMPLE, *cache, *CONTROL)
    assert code == 0 and "(0 already cached)" in stdout, err
    code, stdout, err = run(capsys, "edit", SAMPLE, "-t", "x", *cache, *CONTROL, "-o", tmp_path / "o.mp4")
    assert code == 0 and "1/1 windows from cache" in stdout, err
    code, stdout, err = run(capsys, "edit", SAMPLE, "-t", "x", *cache, "-o", tmp_path / "p.mp4")
    assert code == 0 and "0/1 windows from cache" in stdout, err   # without the ControlNet: another inversion


def test_edit_image_with_a_controlnet(tiny, wolf_frames):
    kw = dict(model=tiny, steps=2, use_cache=False, size="source", target_prompt="a fox")
    plain = videdit.edit_image(wolf_frames[0], **kw)
    zero = videdit.edit_image(wolf_frames[0], control=[ControlSpec("softedge", "tiny-random", 0.0)], **kw)
    one = videdit.edit_image(wolf_frames[0], control=[ControlSpec("softedge", "tiny-random", 1.0)], **kw)
    assert np.array_equal(zero, plain) and zero.shape == (64, 64, 3)
    assert np.abs(one.astype(int) - plain.astype(int)).mean() > 1
