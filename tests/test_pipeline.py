"""edit_image / edit_video end to end on tiny-random (mechanics, not meaning)."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import videdit
from videdit import io
from videdit.errors import VideditError

FAST = dict(model="tiny-random", steps=1, use_cache=False)   # mechanics: one step runs every part


def test_edit_image_array_keeps_any_size():
    img = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)  # not multiples of 8
    out = videdit.edit_image(img, source_prompt="a", target_prompt="b", size=64, **FAST)
    assert out.shape == (37, 53, 3) and out.dtype == np.uint8
    small = videdit.edit_image(img, source_prompt="a", target_prompt="b", size=16, **FAST)
    assert small.shape == (37, 53, 3)


def test_edit_image_file_to_file(tmp_path, shared_data):
    src = shared_data / "videos" / "car-turn" / "00000.png"
    out = videdit.edit_image(src, tmp_path / "edit.png", target_prompt="a jeep", size=64, **FAST)
    back, info = io.read_clip(tmp_path / "edit.png")
    assert out.shape == (512, 512, 3) and back.shape == (1, 512, 512, 3) and info.kind == "image"
    assert np.array_equal(back[0], out)


def test_edit_video_keeps_frames_fps_size(tmp_path, shared_data):
    res = videdit.edit_video(shared_data / "videos" / "ballet-portrait.mp4", tmp_path / "out.mp4",
                             target_prompt="a golden sculpture", read=io.ReadOptions(max_frames=10, size=64),
                             window=4, preview=tmp_path / "p.gif", **FAST)
    assert res.stats.frames == 10 and res.stats.windows == 3
    with av.open(str(tmp_path / "out.mp4")) as c:
        s = c.streams.video[0]
        assert (s.width, s.height, s.average_rate) == (288, 512, Fraction(8))
        assert sum(1 for _ in c.decode(s)) == 10
    gif, _ = io.read_clip(tmp_path / "p.gif")
    assert gif.shape[0] == 10 and gif.shape[2] > gif.shape[1]  # side by side: wider than tall


def test_returns_frames_without_output_and_windows_do_not_change_per_frame_edits(shared_data):
    clip = shared_data / "videos" / "dog.mp4"
    read = io.ReadOptions(max_frames=4, size=64)
    a = videdit.edit_video(clip, target_prompt="a dog", read=read, window=4, **FAST).frames
    b = videdit.edit_video(clip, target_prompt="a dog", read=read, window=1, batch_size=1, **FAST).frames
    assert a.shape == (4, 512, 512, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # per-frame editing: windows are independent


def test_second_edit_uses_the_cache(tmp_path, shared_data):
    kw = dict(model="tiny-random", steps=4, target_prompt="x", read=io.ReadOptions(max_frames=3, size=64),
              cache_dir=tmp_path / "cache")
    first = videdit.edit_video(shared_data / "videos" / "dog.mp4", **kw)
    second = videdit.edit_video(shared_data / "videos" / "dog.mp4", **kw)
    assert (first.stats.cache_hits, second.stats.cache_hits) == (0, 1)
    assert first.stats.inversion_unet_evals == 4 * 1 and second.stats.inversion_unet_evals == 0
    # same edit; float kernels may round one 8-bit level differently on a few pixels
    assert np.abs(first.frames.astype(int) - second.frames).max() <= 1


def test_refuses_to_overwrite_the_input(tmp_path, shared_data):
    clip = tmp_path / "in.mp4"
    clip.write_bytes((shared_data / "videos" / "truck.mp4").read_bytes())
    before = clip.read_bytes()
    with pytest.raises(VideditError, match="overwrite the input"):
        videdit.edit_video(clip, clip, target_prompt="x", **FAST)
    assert clip.read_bytes() == before


def test_a_prompt_is_one_string(shared_data):
    """cases.json lists several target prompts per clip; passing the list is an error that says so,
    before any model work."""
    with pytest.raises(VideditError, match="target_prompt must be one string, got list .* edit once per prompt"):
        videdit.edit_video(shared_data / "videos" / "truck.mp4", source_prompt="a truck",
                           target_prompt=["a red truck", "a blue truck"], **FAST)


def test_a_full_output_folder_is_refused_before_the_model_loads(tmp_path):
    """A non-empty frame folder without ``overwrite`` is refused before any model loads (a hub id
    that does not exist would be the error otherwise), not after the edit ran."""
    out = tmp_path / "frames"
    out.mkdir()
    (out / "00000.png").write_bytes(b"")
    sample = Path(__file__).resolve().parents[1] / "samples" / "red-circle.mp4"
    with pytest.raises(VideditError, match="frames already exists and is not empty; choose another -o path"):
        videdit.edit_video(sample, out, target_prompt="b", model="nobody/no-such-model")
