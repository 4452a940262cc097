"""Condition images per frame: Canny and soft edges computed from the frames, and maps given as
a frame folder, a video or one image, resized to the working size and checked against the clip."""

import cv2
import numpy as np
import pytest

from videdit import io
from videdit.control import Condition, canny, soft_edges
from videdit.control.conditions import ConditionFrames
from videdit.errors import VideditError


@pytest.fixture(scope="module")
def wolf_512(shared_data):
    return io.read_clip(shared_data / "videos" / "wolf.mp4", io.ReadOptions(size=512, max_frames=1))[0]


def test_canny_of_a_shared_frame(wolf_512):
    """Canny at 100/200 on wolf.mp4's first frame at 512x512: measured 3.2% edge pixels, binary, grey."""
    edges = canny(wolf_512)
    assert edges.shape == wolf_512.shape and edges.dtype == np.uint8
    assert set(np.unique(edges).tolist()) == {0, 255}
    assert (edges[..., 0] == edges[..., 2]).all()
    assert 0.02 < (edges[..., 0] > 0).mean() < 0.05
    assert not canny(np.zeros_like(wolf_512)).any()   # a flat frame has no edges


def test_soft_edges_of_a_shared_frame(wolf_512):
    """Soft edges: the strongest is 255, most pixels dark (measured mean 22.4, 4.9% above 64), and
    soft: more pixels lit than Canny's binary edges; a flat frame gives none."""
    edges = soft_edges(wolf_512)
    assert edges.shape == wolf_512.shape and edges.max() == 255
    assert 15 < edges.mean() < 30 and 0.03 < (edges > 64).mean() < 0.07
    assert (edges[..., 0] > 0).mean() > 2 * (canny(wolf_512)[..., 0] > 0).mean()
    assert not soft_edges(np.zeros_like(wolf_512)).any()


def test_parse():
    assert Condition.parse("Canny") == Condition("canny")
    assert Condition.parse("depth=maps/").path.name == "maps"
    fix = r"give one of canny, softedge \(computed from the frames\) or depth\|pose\|image=PATH"
    for bad in ("canny=x.png", "depth", "edges", "pose="):
        with pytest.raises(VideditError, match=fix):
            Condition.parse(bad)


def test_canny_thresholds(wolf_512):
    """"canny=LOW,HIGH" (Rerender-A-Video's canny_low/canny_high): parsed, printed back, and used:
    at 50/100 wolf's first frame has more edge pixels than at the default 100/200."""
    condition = Condition.parse("canny=50,100")
    assert condition == Condition("canny", thresholds=(50, 100)) and str(condition) == "canny=50,100"
    for bad in ("canny=100,50", "canny=50", "canny=a,b"):
        with pytest.raises(VideditError, match="give one of canny"):
            Condition.parse(bad)
    low = ConditionFrames(condition).frames(0, wolf_512)
    assert np.array_equal(low, canny(wolf_512, 50, 100))
    assert (low[..., 0] > 0).mean() > 1.2 * (canny(wolf_512)[..., 0] > 0).mean()


def _maps(directory, n, size=(48, 36)):
    """``n`` frames of a depth-like ramp, each a different grey level, as PNGs (W, H = size)."""
    directory.mkdir()
    for i in range(n):
        cv2.imwrite(str(directory / f"depth_{i:03d}.png"), np.full((size[1], size[0], 3), 20 * i, np.uint8))
    return directory


def test_a_frame_folder_streams_in_step_with_the_windows(tmp_path):
    maps = ConditionFrames(Condition("depth", _maps(tmp_path / "depth", 5)))
    frames = np.zeros((5, 32, 64, 3), np.uint8)
    windows = [maps.frames(start, frames[start:start + 2]) for start in (0, 2, 4)]
    got = np.concatenate(windows)
    assert got.shape == (5, 32, 64, 3)   # resized to the frames' working size
    assert got[:, 0, 0, 0].tolist() == [0, 20, 40, 60, 80]
    assert maps.frames(1, frames[:2])[:, 0, 0, 0].tolist() == [20, 40]   # an earlier frame: read again


def test_one_image_is_every_frame(tmp_path):
    path = tmp_path / "pose.png"
    cv2.imwrite(str(path), np.full((10, 20, 3), 7, np.uint8))
    got = ConditionFrames(Condition.parse(f"pose={path}")).frames(3, np.zeros((4, 16, 32, 3), np.uint8))
    assert got.shape == (4, 16, 32, 3) and (got == 7).all()
    assert Condition.parse(f"pose={path}").check_file(12, io.ReadOptions()) is None


def test_the_frame_count_is_checked_in_one_line(tmp_path):
    condition = Condition("depth", _maps(tmp_path / "depth", 5))
    assert condition.check_file(5, io.ReadOptions()) == 5
    assert condition.check_file(2, io.ReadOptions(start_frame=3)) == 2   # the clip's own selection
    with pytest.raises(VideditError) as e:
        condition.check_file(8, io.ReadOptions())
    assert str(e.value) == (f"--control depth={tmp_path / 'depth'} has 5 frames where the clip has 8 (with the "
                            f"same frame selection); give one map per source frame, or one image for every frame")
    with pytest.raises(VideditError, match="no file or folder at"):
        Condition.parse(f"image={tmp_path / 'nope.mp4'}").check_file(1, io.ReadOptions())
