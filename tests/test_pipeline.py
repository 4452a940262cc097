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


def test_edit_image_checks_its_size_and_output_before_any_work(tmp_path):
    """``size`` reads as --size does ("64x48" a pair); a bad one, an output that is no image or lies in
    a missing folder, and an unknown option are one line each, before any model loads (a hub id
    that does not exist would be the error otherwise)."""
    img = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    pair = videdit.edit_image(img, source_prompt="a", target_prompt="b", size=(64, 48), **FAST)
    assert np.array_equal(videdit.edit_image(img, source_prompt="a", target_prompt="b", size="64x48", **FAST), pair)
    no_model = dict(source_prompt="a", target_prompt="b", model="nobody/no-such-model")
    for size, message in ((0, "size must be >= 1"), (64.0, "size must be an int"), ("big", "size must be an int")):
        with pytest.raises(VideditError, match=message):
            videdit.edit_image(img, size=size, **no_model)
    with pytest.raises(VideditError, match=r"^edit_image writes an image: give output one of .png, .jpg"):
        videdit.edit_image(img, tmp_path / "x.mp4", **no_model)
    with pytest.raises(VideditError, match="the output folder .*missing does not exist; create it"):
        videdit.edit_image(img, tmp_path / "missing" / "x.png", **no_model)
    with pytest.raises(VideditError, match=r"^edit_image has no option 'guidence' \(did you mean 'guidance'\?\)$"):
        videdit.edit_image(img, guidence=3, **no_model)
    with pytest.raises(VideditError, match="^edit_image has no option 'window'; it is edit_video's$"):
        videdit.edit_image(img, window=2, **no_model)
    with pytest.raises(VideditError, match=r"^edit_image reads a path \(a video, a folder of frames or an image\), "
                                           r"not int$"):
        videdit.edit_image(123, tmp_path / "x.png", **no_model)
    from PIL import Image   # a PIL image is its pixels

    assert np.array_equal(videdit.edit_image(Image.fromarray(img), source_prompt="a", target_prompt="b",
                                             size=(64, 48), **FAST), pair)


def test_a_loaded_model_is_not_moved_or_cast_silently(shared_data):
    model = videdit.load_model("tiny-random", device="cpu")
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(VideditError, match=r"^the model is loaded in float32, not bf16; give dtype to load_model"):
        videdit.edit_image(img, model=model, dtype="bf16", target_prompt="b", steps=1)
    # on a machine without CUDA the device itself is refused first
    with pytest.raises(VideditError, match=r"^(the model is loaded on cpu, not cuda|device 'cuda': this torch sees)"):
        videdit.invert_video(shared_data / "videos" / "dog.mp4", model=model, device="cuda", steps=1)
    out = videdit.edit_image(img, model=model, device="cpu", dtype="fp32", target_prompt="b", steps=1, use_cache=False)
    assert out.shape == (32, 32, 3)   # what it has: accepted


def test_edit_video_reads_a_path_and_takes_size_or_read_as_a_mapping(shared_data):
    clip = shared_data / "videos" / "dog.mp4"
    with pytest.raises(VideditError, match=r"^edit_video reads a path .* not ndarray; for one image in memory"):
        videdit.edit_video(np.zeros((2, 8, 8, 3), np.uint8), target_prompt="b", **FAST)
    by_size = videdit.edit_video(clip, target_prompt="b", size=64, read={"max_frames": 2}, **FAST)
    by_read = videdit.edit_video(clip, target_prompt="b", read=io.ReadOptions(max_frames=2, size=64), **FAST)
    assert by_size.stats.size == by_read.stats.size == (64, 64) and np.array_equal(by_size.frames, by_read.frames)
    with pytest.raises(VideditError, match=r"^size 32 and read.size 64 disagree; give one of them$"):
        videdit.edit_video(clip, target_prompt="b", size=32, read={"size": 64}, **FAST)
    with pytest.raises(VideditError, match=r"^read does not take sise"):
        videdit.edit_video(clip, target_prompt="b", read={"sise": 64}, **FAST)


def test_invert_video_counts_its_work_and_fills_the_cache_a_pinned_edit_reads(tmp_path, shared_data):
    """``invert_video`` takes the edit's source branch: ``direct`` under a pinned source branch runs
    its pinned config, which the edit then reads from the cache; its stats count the UNet rows."""
    clip, cache = shared_data / "videos" / "dog.mp4", tmp_path / "cache"
    kw = dict(model="tiny-random", steps=3, size=64, read={"max_frames": 2}, inversion="direct", cache_dir=cache)
    stats = videdit.invert_video(clip, source_prompt="a dog", editor="prompt_to_prompt", source_branch="pinned", **kw)
    assert (stats.frames, stats.cache_hits, stats.inversion_unet_evals) == (2, 0, 3)
    assert stats.seconds["invert"] > 0 and set(stats.seconds) == {"invert", "edit", "compile"}
    edit = videdit.edit_video(clip, source_prompt="a dog", target_prompt="a cat", editor="prompt_to_prompt",
                              source_branch="pinned", **kw)
    assert edit.stats.cache_hits == 1 and edit.stats.inversion_unet_evals == 0


def test_the_package_lists_its_api_and_a_cache_that_is_a_file_is_one_line(tmp_path):
    assert {"edit_image", "edit_video", "edit_batch", "invert_video", "load_model", "ReadOptions"} <= set(dir(videdit))
    (tmp_path / "cache").write_text("")
    with pytest.raises(VideditError, match=r"^the inversion cache .*cache is a file; give cache_dir \(--cache-dir\)"):
        videdit.edit_image(np.zeros((32, 32, 3), np.uint8), target_prompt="b", model="tiny-random", steps=1,
                           cache_dir=tmp_path / "cache")
