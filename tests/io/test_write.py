"""Writing: exact frame rates, audio cut to the frames, odd sizes, atomicity, frame folders,
images, GIF previews, output dispatch and the checks that protect the input."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from videdit.errors import VideditError
from videdit.io.atomic import atomic_path
from videdit.io import (
    ReadOptions,
    check_output_path,
    probe,
    read_clip,
    read_frames,
    write_frames_dir,
    write_gif,
    write_image,
    write_output,
    write_video,
)
from videdit.io.write import gif_delays


@pytest.fixture(scope="module")
def videos(shared_data: Path) -> Path:
    return shared_data / "videos"


def ramp(n: int, h: int, w: int) -> np.ndarray:
    """(n, h, w, 3) uint8 frames that differ per frame and per pixel."""
    y, x = np.mgrid[0:h, 0:w]
    frames = [np.stack([(x * 7 + i * 20) % 256, (y * 5) % 256, np.full_like(x, i * 30 % 256)], -1) for i in range(n)]
    return np.asarray(frames, dtype=np.uint8)


def smooth(n: int, h: int, w: int) -> np.ndarray:
    """(n, h, w, 3) uint8 gradients without hard edges, which 4:2:0 chroma would smear."""
    y, x = np.mgrid[0:h, 0:w]
    frames = [np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 40 * i)], -1) for i in range(n)]
    return np.asarray(frames, dtype=np.uint8)


def streams(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        out = {
            "frames": sum(1 for _ in container.decode(video=0)),
            "rate": video.average_rate,
            "size": (video.codec_context.width, video.codec_context.height),
            "audio": None,
        }
        if container.streams.audio:
            audio = container.streams.audio[0]
            out["audio"] = float(audio.duration * audio.time_base)
    return out


def failing_after_first(chunk: np.ndarray):
    yield chunk
    raise RuntimeError("edit crashed")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- video -------------------------------------------------------------------------------------


def test_video_with_audio_cut_to_the_frames(videos, tmp_path):
    source = videos / "man-skiing.mp4"
    options = ReadOptions(start_frame=30, end_frame=61)
    info = probe(source, options)
    assert info.n_frames == 31 and info.has_audio
    out = write_output(tmp_path / "ski.mp4", read_frames(source, options), info, input_path=source)
    got = streams(out)
    assert got["frames"] == 31 and got["rate"] == Fraction(30000, 1001) and got["size"] == (718, 718)
    assert got["audio"] == pytest.approx(31 * 1001 / 30000, abs=0.1)
    assert leftovers(tmp_path) == ["ski.mp4"]
    # the frames survive the round trip (crf 18)
    back, back_info = read_clip(out)
    original, _ = read_clip(source, options)
    assert back_info.fps == Fraction(30000, 1001) and back.shape == original.shape
    assert np.abs(back.astype(np.int16) - original).mean() < 3


def test_audio_is_cut_at_the_requested_times(videos, tmp_path):
    frames = ramp(10, 32, 32)
    out = write_video(tmp_path / "a.mp4", frames, 10, audio_from=videos / "man-skiing.mp4", audio_start_s=2.5)
    assert streams(out)["audio"] == pytest.approx(0.536, abs=0.03)  # the source's audio ends at 3.036 s
    out = write_video(tmp_path / "b.mp4", frames, 10, audio_from=videos / "man-skiing.mp4", audio_start_s=0.5)
    assert streams(out)["audio"] == pytest.approx(1.0, abs=0.03)  # defaults to the video's length
    with pytest.warns(UserWarning, match="audio ends at 3.018 s, before audio_start_s=5.0"):
        out = write_video(tmp_path / "c.mp4", frames, 10, audio_from=videos / "man-skiing.mp4", audio_start_s=5.0)
    assert streams(out)["audio"] is None


def _clip_with_a_click(path: Path, video_start: float, audio_start: float, fps: int = 25, rate: int = 48000) -> Path:
    """50 frames of 32x32 at ``fps`` from ``video_start`` s on the container's clock, audio from
    ``audio_start`` s, silent but for a click at frame 25's time."""
    with av.open(str(path), "w") as c:
        video = c.add_stream("libx264", rate=fps)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = Fraction(1, fps * 100)
        audio = c.add_stream("aac", rate=rate, layout="mono")
        for i in range(50):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 8 * (i % 25), np.uint8), format="rgb24")
            frame.pts, frame.time_base = round((video_start + i / fps) * fps * 100), Fraction(1, fps * 100)
            c.mux(video.encode(frame))
        c.mux(video.encode(None))
        signal = np.zeros(int((50 / fps + 0.5) * rate), np.float32)
        click = round((video_start + 25 / fps - audio_start) * rate)
        signal[click:click + 480] = 0.9
        for at in range(0, len(signal), 1024):
            frame = av.AudioFrame.from_ndarray(signal[None, at:at + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, round(audio_start * rate) + at, Fraction(1, rate)
            c.mux(audio.encode(frame))
        c.mux(audio.encode(None))
    return path


def _click_s(path: Path) -> float:
    """Seconds from the first video frame of ``path`` to its audio's click."""
    with av.open(str(path)) as c:
        origin = float(c.streams.video[0].start_time * c.streams.video[0].time_base)
        pieces, start = [], None
        for frame in c.decode(c.streams.audio[0]):
            start = frame.time if start is None else start
            pieces.append(frame.to_ndarray().reshape(-1) if frame.format.is_planar else frame.to_ndarray()[0])
        rate = c.streams.audio[0].codec_context.sample_rate
    return start + int(np.argmax(np.abs(np.concatenate(pieces)) > 0.3)) / rate - origin


@pytest.mark.parametrize("video_start, audio_start", [(0.5, 0.0), (0.0, 0.5)])
def test_audio_stays_with_its_frames_where_the_streams_start_apart(tmp_path, video_start, audio_start):
    """A video stream that starts after its audio (a clip cut without re-encoding) keeps the audio
    that plays with its frames; audio that starts after the video is preceded by silence. The click
    that sounds with frame 25 sounds with it in the output: at 1.0 s, from any first frame."""
    source = _clip_with_a_click(tmp_path / "source.mp4", video_start, audio_start)
    assert _click_s(source) == pytest.approx(1.0, abs=0.002)
    for start_frame in (0, 10):
        options = ReadOptions(start_frame=start_frame)
        info = probe(source, options)
        out = write_output(tmp_path / f"out{start_frame}.mp4", read_frames(source, options), info, input_path=source)
        # measured within 0.001 s (the AAC encoder's own delay is in the container's edit list)
        assert _click_s(out) == pytest.approx(1.0 - start_frame / 25, abs=0.003)


def test_video_without_audio_source(videos, tmp_path):
    frames, info = read_clip(videos / "wolf.mp4", ReadOptions(max_frames=6, size=128))
    out = write_output(tmp_path / "wolf.mp4", iter([frames[:4], frames[4:]]), info, input_path=videos / "wolf.mp4")
    got = streams(out)
    assert (got["frames"], got["rate"], got["size"], got["audio"]) == (6, 20, (128, 128), None)


@pytest.mark.parametrize("suffix, codec", [(".mov", "h264"), (".mkv", "h264"), (".webm", "vp9")])
def test_other_containers(tmp_path, suffix, codec):
    out = write_video(tmp_path / f"clip{suffix}", ramp(5, 48, 64), Fraction(30000, 1001))
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == codec
    info = probe(out)
    assert info.source_frames == 5 and info.fps == Fraction(30000, 1001) and info.source_size == (64, 48)


def test_odd_size_is_padded_by_edge_replication(tmp_path):
    frames = smooth(3, 17, 33)
    with pytest.warns(UserWarning, match=r"33x17 is odd; padded to 34x18"):
        out = write_video(tmp_path / "odd.mp4", frames, 8, crf=0)
    back, info = read_clip(out)
    assert info.source_size == (34, 18) and back.shape == (3, 18, 34, 3)
    padded = np.pad(frames, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")
    assert np.abs(back.astype(np.int16) - padded).mean() < 5  # crf 0; the rest is yuv420p rounding
    # the added column/row repeat the last ones
    assert np.abs(back[:, :17, 33].astype(np.int16) - back[:, :17, 32]).mean() < 3
    assert np.abs(back[:, 17, :33].astype(np.int16) - back[:, 16, :33]).mean() < 3


def test_video_input_errors(tmp_path):
    with pytest.raises(VideditError, match="no frames to write"):
        write_video(tmp_path / "empty.mp4", [], 10)
    with pytest.raises(VideditError, match=r"must be uint8 RGB arrays \(n, H, W, 3\), got float32"):
        write_video(tmp_path / "f.mp4", np.zeros((2, 8, 8, 3), np.float32), 10)
    with pytest.raises(VideditError, match="change size from 8x8 to 16x8"):
        write_video(tmp_path / "s.mp4", [ramp(1, 8, 8), ramp(1, 8, 16)], 10)
    with pytest.raises(VideditError, match="crf must be in 0..51"):
        write_video(tmp_path / "c.mp4", ramp(1, 8, 8), 10, crf=80)
    assert leftovers(tmp_path) == []


# --- atomicity ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "write",
    [
        lambda p, chunks: write_video(p / "out.mp4", chunks, 10),
        lambda p, chunks: write_frames_dir(p / "frames", chunks),
        lambda p, chunks: write_gif(p / "out.gif", chunks, 10),
    ],
    ids=["video", "frames_dir", "gif"],
)
def test_failed_write_leaves_nothing(tmp_path, write):
    with pytest.raises(RuntimeError, match="edit crashed"):
        write(tmp_path, failing_after_first(ramp(4, 16, 16)))
    assert leftovers(tmp_path) == []


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "out.mp4"
    target.write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        write_video(target, failing_after_first(ramp(2, 16, 16)), 10)
    assert target.read_bytes() == b"previous result" and leftovers(tmp_path) == ["out.mp4"]


# --- frame folders and images ------------------------------------------------------------------


def test_frames_dir_round_trip(tmp_path):
    frames = ramp(12, 20, 30)
    out = write_frames_dir(tmp_path / "frames", iter([frames[:5], frames[5:]]))
    assert leftovers(out) == [f"{i:05d}.png" for i in range(12)]
    back, info = read_clip(out)
    assert info.kind == "frames" and np.array_equal(back, frames)  # PNG is lossless
    with pytest.raises(VideditError, match="already exists and is not empty"):
        write_frames_dir(out, frames[:2])
    write_frames_dir(out, frames[:2], overwrite=True)
    assert leftovers(out) == ["00000.png", "00001.png"] and leftovers(tmp_path) == ["frames"]


def test_write_image(tmp_path):
    frame = ramp(1, 24, 40)[0]
    png = write_image(tmp_path / "a.png", frame)
    back, info = read_clip(png)
    assert info.kind == "image" and np.array_equal(back[0], frame)
    jpg = write_image(tmp_path / "a.jpg", frame[None])
    assert np.abs(read_clip(jpg)[0][0].astype(np.int16) - frame).mean() < 8
    with pytest.raises(VideditError, match="holds one frame but got 2"):
        write_image(tmp_path / "b.png", ramp(2, 8, 8))
    assert leftovers(tmp_path) == ["a.jpg", "a.png"]


# --- GIF ---------------------------------------------------------------------------------------


def test_gif_caps_rate_length_and_size(videos, tmp_path):
    frames, info = read_clip(videos / "man-skiing.mp4", ReadOptions(size=128, backend="decord"))
    out = write_gif(tmp_path / "edit.gif", iter([frames[:40], frames[40:]]), float(info.out_fps))
    with Image.open(out) as gif:
        # 29.97 fps > 12: every 3rd frame -> 31 frames, each shown for 3 of the clip's frames (10.01 cs), the
        # last for the one frame left (3.34 cs): 303.6 cs, as long as the clip's 91 frames
        assert gif.n_frames == 31 and gif.size == (128, 128) and gif.info["loop"] == 0
        assert delays(gif) == [10] * 30 + [4]
    assert iio.imread(out, index=None).shape == (31, 128, 128, 3)

    long = ramp(100, 90, 180)
    side = write_gif(tmp_path / "side.gif", long, 10, source=long[:, ::-1], max_side=60)
    with Image.open(side) as gif:
        # 100 > 48 frames: 48 picked evenly, slowed to 4.8 fps (20.83 cs a frame) to still last 10 s
        assert gif.n_frames == 48 and gif.size == (120, 30) and sum(delays(gif)) == 1000
        assert set(delays(gif)) == {20, 21}
    single = write_gif(tmp_path / "single.gif", long[:5], 10, max_side=60)
    with Image.open(single) as gif:
        assert gif.n_frames == 5 and gif.size == (60, 30)
    with pytest.raises(VideditError, match="one frame per edited frame"):
        write_gif(tmp_path / "bad.gif", long[:5], 10, source=long[:4])


def delays(gif: Image.Image) -> list[int]:
    """Each frame's delay in centiseconds."""
    out = []
    for k in range(gif.n_frames):
        gif.seek(k)
        out.append(gif.info["duration"] // 10)
    return out


@pytest.mark.parametrize("fps, expected", [(29.97, [3, 4, 3, 3, 4, 3, 3, 4, 3]), (8, [13, 12, 13, 12]),
                                           (50, [2, 2, 2]), (24, [4, 4, 5, 4, 4, 4])])
def test_gif_delays_follow_the_clips_clock(fps, expected):
    assert gif_delays(len(expected), fps) == expected
    n = 1000
    ends = np.cumsum(gif_delays(n, fps))
    assert np.abs(ends - 100 * np.arange(1, n + 1) / fps).max() <= 0.5   # never half a centisecond off


def test_gif_reads_back_as_a_clip(tmp_path):
    out = write_gif(tmp_path / "clip.gif", ramp(6, 32, 48), 8)
    frames, info = read_clip(out)
    assert info.backend == "pyav" and frames.shape == (6, 32, 48, 3)


# --- dispatch and output checks ----------------------------------------------------------------


@pytest.mark.parametrize("fps, n_gif, centiseconds", [(30, 60, {3, 4}), (60, 30, {3, 4})])
def test_a_gif_output_is_the_whole_edit_at_the_sources_size(fps, n_gif, centiseconds, tmp_path):
    """`-o edit.gif` (unlike a --preview) keeps every frame at the source's size; above GIF's 50 fps, every
    k-th frame (60 fps: every 2nd, at 30 fps: 3 and 4 cs delays, 3.33 on average)."""
    src = write_video(tmp_path / "src.mp4", [ramp(60, 200, 300)], fps)
    info = probe(src)
    out = write_output(tmp_path / "edit.gif", read_frames(src), info, input_path=src)
    with Image.open(out) as gif:
        assert (gif.n_frames, gif.size) == (n_gif, (300, 200))
        assert set(delays(gif)) == centiseconds and sum(delays(gif)) == 100 * 60 // fps   # as long as the clip


def test_write_output_dispatch(videos, tmp_path):
    folder = videos / "car-turn"
    options = ReadOptions(size=64, max_frames=3)
    info = probe(folder, options)
    out = write_output(tmp_path / "edit", read_frames(folder, options), info, input_path=folder)
    assert leftovers(out) == ["00000.png", "00001.png", "00002.png"]
    out = write_output(tmp_path / "edit.gif", read_frames(folder, options), info, input_path=folder)
    with Image.open(out) as gif:
        assert gif.n_frames == 3 and delays(gif) == [13, 12, 13]  # folder default 8 fps: ends at 12.5, 25, 37.5 cs
    with pytest.raises(VideditError, match="holds one frame but the clip has 3"):
        write_output(tmp_path / "edit.png", read_frames(folder, options), info, input_path=folder)
    image = folder / "00000.png"
    info = probe(image, ReadOptions(size=64))
    out = write_output(tmp_path / "one.jpg", read_frames(image, ReadOptions(size=64)), info, input_path=image)
    assert read_clip(out)[0].shape == (1, 64, 64, 3)
    with pytest.raises(VideditError, match="single image; write it to a .png/.jpg"):
        write_output(tmp_path / "one.mp4", read_frames(image), info, input_path=image)
    with pytest.raises(VideditError, match="unknown suffix '.avi'"):
        write_output(tmp_path / "x.avi", read_frames(image), info, input_path=image)


def test_check_output_path(videos, tmp_path):
    wolf = videos / "wolf.mp4"
    with pytest.raises(VideditError, match="refusing to overwrite the input .*; choose another -o path"):
        check_output_path(wolf, wolf)
    link = tmp_path / "link.mp4"
    link.symlink_to(wolf)
    with pytest.raises(VideditError, match="refusing to overwrite the input"):
        check_output_path(link, wolf)
    with pytest.raises(VideditError, match="refusing to overwrite the input"):
        check_output_path(videos / "car-turn" / "00003.png", videos / "car-turn")
    with pytest.raises(VideditError, match="the input .* is inside it"):
        check_output_path(videos, wolf)
    with pytest.raises(VideditError, match="output folder .*missing does not exist; create it"):
        check_output_path(tmp_path / "missing" / "out.mp4", wolf)
    check_output_path(tmp_path / "out.mp4", wolf)  # fine
    check_output_path(tmp_path / "frames", videos / "car-turn")  # fine
    with pytest.raises(VideditError) as e:   # a path through a file
        check_output_path(wolf / "out.mp4", tmp_path / "in.mp4")
    assert str(e.value) == f"{wolf} is a file, not a folder; choose another -o path"
    with pytest.raises(VideditError, match="cannot write to /, the file system's root; choose another -o path"):
        check_output_path("/", wolf)


def test_an_output_folder_is_checked_before_the_edit(tmp_path, monkeypatch):
    """Without ``overwrite`` a non-empty frame folder is refused, with it one holding anything but
    frames (replacing it would delete the rest); a folder that cannot be written is refused too."""
    wolf = tmp_path / "in.mp4"
    out = tmp_path / "mine"
    out.mkdir()
    (out / "00000.png").write_bytes(b"")
    with pytest.raises(VideditError, match="mine already exists and is not empty; choose another -o path or pass "
                                           r"--overwrite \(overwrite=True\) to replace its frames$"):
        check_output_path(out, wolf, overwrite=False)
    check_output_path(out, wolf, overwrite=True)   # frames only: replaced
    check_output_path(out, wolf)                   # no overwrite given: the folder is the writer's to check
    for name in ("notes.txt", "sub", "b.txt", "c.txt"):
        (out / name).mkdir() if name == "sub" else (out / name).write_text("keep\n")
    with pytest.raises(VideditError) as e:
        check_output_path(out, wolf, overwrite=True)
    assert str(e.value) == (f"{out} holds more than frames (b.txt, c.txt, notes.txt and 1 more), which --overwrite "
                            f"would delete; choose another -o path")
    with pytest.raises(VideditError, match="holds more than frames"):
        write_frames_dir(out, ramp(2, 8, 8), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "b.txt", "c.txt", "notes.txt", "sub"]
    monkeypatch.setattr(os, "access", lambda path, mode: False)   # a read-only folder (root passes chmod)
    with pytest.raises(VideditError) as e:
        check_output_path(tmp_path / "out.mp4", wolf)
    assert str(e.value) == f"cannot write in {tmp_path} (read-only or not yours); choose another -o path"


def test_a_failed_write_says_its_own_error_when_its_temporary_cannot_be_removed(tmp_path, monkeypatch):
    """On a read-only file system removing the never-made temporary fails too (EROFS): the write's
    own error is the one raised."""
    def refuse(self, missing_ok=False):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(VideditError, match="could not write"):
        with atomic_path(tmp_path / "out.png"):
            raise VideditError("could not write out.png (Read-only file system)")


def test_a_dot_output_names_its_folder(tmp_path, monkeypatch):
    """``-o .`` (the working folder, empty) gets the frames; its temporary sits in the parent."""
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    write_frames_dir(".", ramp(2, 8, 8))
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == ["00000.png", "00001.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]
