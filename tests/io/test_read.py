"""Reading clips: frame counts, rates and sizes of the real clips in ../shared/data on both
decoders, the broken and truncated containers, frame folders, images, options and errors."""

from __future__ import annotations

import dataclasses
import warnings
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import cv2
import numpy as np
import pytest

from videdit.errors import VideditError
from videdit.io import BACKEND_ENV, BrokenVideoWarning, ReadOptions, is_image, probe, read_clip, read_frames
from videdit.io import video as video_module

BACKENDS = ["decord", "pyav"]

# name, frames, fps, (W, H), audio -- the table in ../shared/data/README.md
CLIPS = [
    ("wolf.mp4", 40, Fraction(20), (512, 512), False),
    ("man-skiing.mp4", 91, Fraction(30000, 1001), (718, 718), True),
    ("dog.mp4", 32, Fraction(10), (512, 512), False),
    ("truck.mp4", 21, Fraction(10), (512, 512), False),
    ("ballet-portrait.mp4", 40, Fraction(8), (288, 512), False),
]


@pytest.fixture(scope="module")
def videos(shared_data: Path) -> Path:
    return shared_data / "videos"


def count(path: Path, options: ReadOptions) -> tuple[int, list[int], tuple[int, ...]]:
    """(frames, chunk lengths, shape of one frame) as yielded."""
    lengths, shape = [], ()
    for chunk in read_frames(path, options):
        assert chunk.dtype == np.uint8 and chunk.ndim == 4
        lengths.append(len(chunk))
        shape = chunk.shape[1:]
    return sum(lengths), lengths, shape


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --- the shared clips -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, frames, fps, size, audio", CLIPS)
def test_clip_counts_rates_sizes(videos, backend, name, frames, fps, size, audio):
    options = ReadOptions(backend=backend, size=32)
    info = probe(videos / name, options)
    assert (info.kind, info.backend, info.n_frames, info.source_frames) == ("video", backend, frames, frames)
    assert info.fps == fps and isinstance(info.fps, Fraction) and info.out_fps == fps
    assert info.source_size == size and info.has_audio is audio
    assert info.indices == tuple(range(frames))
    assert info.start_s == 0 and info.end_s == pytest.approx(float(frames / fps))
    n, lengths, shape = count(videos / name, options)
    assert n == frames and max(lengths) <= 16
    assert shape == (info.size[1], info.size[0], 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_portrait_clip(videos, backend):
    path = videos / "man-talking-portrait-long.mp4"
    options = ReadOptions(backend=backend, size=64, stride=25)
    info = probe(path, options)
    assert info.source_frames == 353 and info.fps == 25 and info.source_size == (540, 960)
    assert info.size == (64, 114)  # 960 * 64 / 540 = 113.8 -> 114
    assert info.indices == tuple(range(0, 353, 25)) and info.out_fps == 1
    assert count(path, options)[0] == 15


def test_backends_give_the_same_pixels(videos):
    options = ReadOptions(start_frame=3, end_frame=40, stride=9, backend="decord")  # frames 3, 12, 21, 30, 39
    decord_frames, info = read_clip(videos / "wolf.mp4", options)
    pyav_frames, pyav_info = read_clip(videos / "wolf.mp4", dataclasses.replace(options, backend="pyav"))
    assert info.backend == "decord" and pyav_info.backend == "pyav"
    assert decord_frames.shape == pyav_frames.shape == (5, 512, 512, 3)
    assert np.array_equal(decord_frames, pyav_frames)   # so "auto" (PyAV) reads what decord reads
    assert mean_abs(decord_frames[0], decord_frames[1]) > 5  # distinct frames, so the match means something


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
def test_broken_timestamps_yield_decodable_frames_in_display_order(videos, backend):
    path = videos / "camel-broken-timestamps.mp4"
    with pytest.warns(BrokenVideoWarning, match=r"timestamps are broken.*7 of 8 declared frames"):
        frames, info = read_clip(path, ReadOptions(backend=backend))
    # decord would pad with a copy of the 7th frame; broken files always go to PyAV
    assert info.backend == "pyav" and info.n_frames == info.source_frames == 7 and frames.shape == (7, 512, 512, 3)
    assert info.fps == 2  # frames are 0.5 s apart; the average rate (~2.22) counts the undecodable one
    diffs = [mean_abs(frames[i], frames[j]) for i in range(7) for j in range(i + 1, 7)]
    assert min(diffs) > 10  # no duplicates
    # the stored pts disagree with the decoder's output order; the output order is the smooth one
    with av.open(str(path)) as container:
        pts = [frame.pts for frame in container.decode(video=0)]
    assert pts != sorted(pts)
    by_pts = [frames[i] for i in np.argsort(pts, kind="stable")]

    def path_length(seq):
        return sum(mean_abs(a, b) for a, b in zip(seq, seq[1:]))

    assert path_length(list(frames)) < path_length(by_pts) - 5


def test_decord_pads_the_broken_clip_with_a_duplicate(videos):
    """Documents why camel goes to PyAV: decord claims 8 frames and repeats the 7th."""
    decord = video_module.load_decord()
    if decord is None:
        pytest.skip("decord not installed")
    reader = decord.VideoReader(str(videos / "camel-broken-timestamps.mp4"))
    assert len(reader) == 8
    batch = reader.get_batch([6, 7]).asnumpy()
    assert mean_abs(batch[0], batch[1]) == 0


# --- chunking and memory -----------------------------------------------------------------------


def test_chunks_and_decord_reads_only_selected_indices(videos, monkeypatch):
    real = video_module.load_decord()
    if real is None:
        pytest.skip("decord not installed")
    calls: list[list[int]] = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            self._reader = real.VideoReader(*args, **kwargs)

        def __len__(self):
            return len(self._reader)

        def get_batch(self, indices):
            calls.append(list(indices))
            return self._reader.get_batch(indices)

    monkeypatch.setattr(video_module, "load_decord", lambda: SimpleNamespace(VideoReader=Recorder, cpu=real.cpu))
    options = ReadOptions(stride=2, chunk_size=7, size=32, backend="decord")
    n, lengths, _ = count(videos / "dog.mp4", options)
    assert (n, lengths) == (16, [7, 7, 2])
    assert calls == [[0, 2, 4, 6, 8, 10, 12], [14, 16, 18, 20, 22, 24, 26], [28, 30]]


def test_pyav_converts_only_selected_frames(videos, monkeypatch):
    converted = []
    real_rgb = video_module.rgb

    def counting_rgb(frame, rotation):
        converted.append(frame)
        return real_rgb(frame, rotation)

    monkeypatch.setattr(video_module, "rgb", counting_rgb)
    options = ReadOptions(backend="pyav", start_frame=5, end_frame=30, stride=4, chunk_size=3)
    n, lengths, _ = count(videos / "dog.mp4", options)
    assert (n, lengths) == (7, [3, 3, 1]) and len(converted) == 7


def test_decord_failure_midway_continues_with_pyav(videos, monkeypatch):
    real = video_module.load_decord()
    if real is None:
        pytest.skip("decord not installed")

    class FailsSecondBatch:
        def __init__(self, *args, **kwargs):
            self._reader, self._calls = real.VideoReader(*args, **kwargs), 0

        def __len__(self):
            return len(self._reader)

        def get_batch(self, indices):
            self._calls += 1
            if self._calls == 2:
                raise RuntimeError("simulated decord failure")
            return self._reader.get_batch(indices)

    expected, _ = read_clip(videos / "truck.mp4", ReadOptions(backend="pyav", chunk_size=8))
    fake = SimpleNamespace(VideoReader=FailsSecondBatch, cpu=real.cpu)
    monkeypatch.setattr(video_module, "load_decord", lambda: fake)
    with pytest.warns(UserWarning, match="simulated decord failure.*remaining frames with PyAV"):
        frames, info = read_clip(videos / "truck.mp4", ReadOptions(chunk_size=8, backend="decord"))
    assert info.backend == "decord" and frames.shape == (21, 512, 512, 3)
    assert mean_abs(frames, expected) < 0.5


def test_backend_choice(videos, monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert probe(videos / "truck.mp4").backend == "pyav"   # auto: PyAV, at flat memory
    if video_module.load_decord() is not None:
        monkeypatch.setenv(BACKEND_ENV, "decord")
        assert probe(videos / "truck.mp4").backend == "decord"
    monkeypatch.setenv(BACKEND_ENV, "pyav")
    assert probe(videos / "truck.mp4").backend == "pyav"
    assert probe(videos / "truck.mp4", ReadOptions(backend="decord")).backend == "decord"  # option beats env
    monkeypatch.setenv(BACKEND_ENV, "opencv")
    with pytest.raises(VideditError, match="VIDEDIT_VIDEO_BACKEND='opencv' is not a backend"):
        probe(videos / "truck.mp4")
    monkeypatch.delenv(BACKEND_ENV)
    monkeypatch.setattr(video_module, "load_decord", lambda: None)  # as on aarch64
    assert probe(videos / "truck.mp4").backend == "pyav"
    with pytest.raises(VideditError, match="decord is not installed"):
        probe(videos / "truck.mp4", ReadOptions(backend="decord"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_display_rotation_is_applied(tmp_path, backend):
    path = tmp_path / "rotated.mp4"
    frame = np.zeros((32, 64, 3), np.uint8)
    frame[:, :8] = 255  # white band on the left
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(90)  # counter-clockwise, as a phone's portrait video
        for i in range(3):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            container.mux(stream.encode(vf))
        container.mux(stream.encode(None))
    frames, info = read_clip(path, ReadOptions(backend=backend))
    assert info.backend == "pyav"  # rotated files are read with PyAV, which rotates exactly
    assert info.source_size == (32, 64) and frames.shape == (3, 64, 32, 3)
    rows = frames[0].mean(axis=(1, 2))
    assert rows[-4:].min() > 200 and rows[:48].max() < 30  # the band turned to the bottom


# --- frame folders and images ------------------------------------------------------------------


def test_frame_folder(videos):
    folder = videos / "car-turn"
    info = probe(folder)
    assert (info.kind, info.backend, info.n_frames, info.fps) == ("frames", "images", 8, 8)
    assert info.source_size == (512, 512)
    frames, info = read_clip(folder, ReadOptions(start_frame=2, stride=2, size=(96, 64), folder_fps=24))
    assert info.indices == (2, 4, 6) and info.fps == 24 and info.out_fps == 12
    assert frames.shape == (3, 64, 96, 3)
    expected = cv2.cvtColor(cv2.imread(str(folder / "00004.png")), cv2.COLOR_BGR2RGB)
    assert mean_abs(frames[1], cv2.resize(expected, (96, 64), interpolation=cv2.INTER_AREA)) == 0


def _solid(path: Path, value: int, size: tuple[int, int] = (8, 6)) -> None:
    cv2.imwrite(str(path), np.full((size[1], size[0], 3), value, np.uint8))


def test_frame_folder_natural_sort_and_sizes(tmp_path):
    for name, value in [("frame10.png", 30), ("frame2.png", 20), ("frame1.jpg", 10), ("notes.txt", 0)]:
        if name.endswith(".txt"):
            (tmp_path / name).write_text("not a frame")
        else:
            _solid(tmp_path / name, value)
    frames, info = read_clip(tmp_path)
    assert info.n_frames == 3 and info.size == (8, 6)
    assert [int(round(f.mean())) for f in frames] == [10, 20, 30]  # frame1, frame2, frame10
    _solid(tmp_path / "frame3.png", 40, size=(10, 6))
    with pytest.raises(VideditError, match=r"frame3\.png is 10x6 but frame1\.jpg is 8x6"):
        probe(tmp_path)


def test_empty_folder(tmp_path):
    with pytest.raises(VideditError, match="no image frames .* in folder"):
        probe(tmp_path)


def test_single_image(videos):
    path = videos / "car-turn" / "00003.png"
    assert is_image(path) and not is_image(videos / "wolf.mp4") and not is_image(videos / "car-turn")
    frames, info = read_clip(path, ReadOptions(size=64))
    assert (info.kind, info.n_frames, info.fps, info.out_fps, info.size) == ("image", 1, None, None, (64, 64))
    assert frames.shape == (1, 64, 64, 3)
    with pytest.raises(VideditError, match="single image"):
        probe(path, ReadOptions(start_s=1.0))


# --- options -----------------------------------------------------------------------------------


def test_frame_range_and_max_frames(videos):
    info = probe(videos / "wolf.mp4", ReadOptions(start_frame=10, end_frame=20))
    assert info.indices == tuple(range(10, 20)) and info.start_s == 0.5 and info.end_s == 1.0
    assert probe(videos / "wolf.mp4", ReadOptions(start_frame=35, end_frame=400)).indices == (35, 36, 37, 38, 39)
    info = probe(videos / "wolf.mp4", ReadOptions(stride=3, max_frames=5))
    assert info.indices == (0, 3, 6, 9, 12) and info.out_fps == Fraction(20, 3)
    assert info.end_s == pytest.approx(5 * 3 / 20)


def test_seconds_range(videos):
    info = probe(videos / "man-skiing.mp4", ReadOptions(start_s=1.0, end_s=2.0))
    # frame i starts at i * 1001 / 30000 s: 30 starts at 1.001, 59 at 1.968
    assert info.indices == tuple(range(30, 60))
    assert info.start_s == pytest.approx(1.001) and info.end_s == pytest.approx(60 * 1001 / 30000)


def test_target_fps(videos):
    info = probe(videos / "man-skiing.mp4", ReadOptions(fps=10))
    assert info.out_fps == 10 and info.n_frames == 31
    assert info.indices[:4] == (0, 3, 6, 9) and info.indices[-1] == 90
    assert probe(videos / "wolf.mp4", ReadOptions(fps=20)).indices == tuple(range(40))
    with pytest.raises(VideditError, match="above the source rate"):
        probe(videos / "dog.mp4", ReadOptions(fps=24))


@pytest.mark.parametrize("backend", BACKENDS)
def test_resize_short_side_portrait(videos, backend):
    frames, info = read_clip(videos / "ballet-portrait.mp4", ReadOptions(size=256, max_frames=3, backend=backend))
    assert info.source_size == (288, 512) and info.size == (256, 455)  # 512 * 256 / 288 = 455.1
    assert frames.shape == (3, 455, 256, 3)
    frames, info = read_clip(videos / "ballet-portrait.mp4", ReadOptions(size=(100, 40), max_frames=2))
    assert info.size == (100, 40) and frames.shape == (2, 40, 100, 3)


# --- errors ------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(VideditError, match="no such file: .*nope.mp4"):
        read_frames(tmp_path / "nope.mp4")


def test_text_renamed_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(VideditError, match=r"notes\.mp4 is not a readable video \("):
        probe(path)


def test_start_past_the_end(videos):
    with pytest.raises(VideditError) as e:
        read_frames(videos / "wolf.mp4", ReadOptions(start_frame=100))
    assert str(e.value) == (f"start frame 100 (--start-frame, start_frame) is past the end of {videos / 'wolf.mp4'} "
                            "(40 frames)")
    with pytest.raises(VideditError, match=r"the start 9.0 s \(--start, start_s; frame 180\) is past the end"):
        probe(videos / "wolf.mp4", ReadOptions(start_s=9.0))


def _truncate(source: Path, target: Path, fraction: float = 0.3) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_mp4_index_first(videos, tmp_path, backend):
    """truck.mp4 keeps its index (moov) before the data: 30% of it still holds some frames."""
    path = _truncate(videos / "truck.mp4", tmp_path / "truck-cut.mp4")
    with pytest.warns(BrokenVideoWarning, match=r"damaged or truncated.*5 of 21 declared frames"):
        frames, info = read_clip(path, ReadOptions(backend=backend))
    assert info.backend == "pyav" and frames.shape == (5, 512, 512, 3)
    # frames 0-3 survive intact; frame 4's packet is cut, 5 is missing, so the 5th yielded is frame 6
    expected, _ = read_clip(videos / "truck.mp4", ReadOptions(end_frame=7))
    assert mean_abs(frames[:4], expected[:4]) < 0.5
    assert mean_abs(frames[4], expected[6]) < 0.5


def test_truncated_mp4_index_last(videos, tmp_path):
    """wolf.mp4 keeps its index at the end: cut to 30% nothing is readable."""
    path = _truncate(videos / "wolf.mp4", tmp_path / "wolf-cut.mp4")
    with pytest.raises(VideditError, match=r"wolf-cut\.mp4 is not a readable video"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_frames(path)


def test_a_gif_of_uneven_delays_plays_at_its_own_pace(tmp_path):
    """videdit's own 29.97-fps GIF holds delays of 3, 4, 3, ... hundredths (30 frames: 1.00 s); ffmpeg
    states its first delay's rate, 33.3 fps. It reads at 30 fps, so the clip lasts as long as it plays."""
    from videdit.io import write_gif

    frames = np.random.default_rng(0).integers(0, 255, (30, 16, 16, 3), dtype=np.uint8)
    gif = write_gif(tmp_path / "clip.gif", iter([frames]), Fraction(30000, 1001), max_fps=50)
    with av.open(str(gif)) as c:
        assert c.streams.video[0].average_rate == Fraction(100, 3)
    info = probe(gif)
    assert (info.n_frames, info.fps) == (30, 30)


def _vfr_clip(path: Path) -> Path:
    """1 s at 25 fps, then 2 s at 12.5 fps (50 frames), on a 1/1000 s clock."""
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate([i / 25 for i in range(25)] + [1 + i / 12.5 for i in range(25)]):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 5 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            c.mux(stream.encode(frame))
        c.mux(stream.encode(None))
    return path


def test_a_variable_frame_rate_keeps_each_frames_time(tmp_path):
    """A clip whose frames stray from any constant rate keeps their own times: in the selection by
    seconds (--start 1.5: frame 32, at 1.56 s), in a resampling (--fps 10: the frame nearest each
    tick, once) and in the outputs (a video's timestamps, a GIF's delays)."""
    from videdit.io import write_output

    path = _vfr_clip(tmp_path / "vfr.mp4")
    info = probe(path)
    # the mean rate: 50 frames from 0 to 2.96 s (the encoder marks the last frame 0.04 s long)
    assert (info.n_frames, info.fps) == (50, Fraction(625, 37))
    assert info.times[24:27] == pytest.approx([0.96, 1.0, 1.08]) and info.end_s == pytest.approx(2.92 + 37 / 625)
    part = probe(path, ReadOptions(start_s=1.5, end_s=2.5))
    assert part.indices == tuple(range(32, 44)) and part.start_s == pytest.approx(1.56)
    assert part.times[:2] == pytest.approx([0, 0.08]) and part.end_s == pytest.approx(2.52)
    resampled = probe(path, ReadOptions(fps=10))
    # ties go to the later frame, as the constant-rate resampling rounds half up
    assert resampled.indices[:8] == (0, 3, 5, 8, 10, 13, 15, 18) and resampled.indices[-3:] == (46, 48, 49)
    with pytest.raises(VideditError, match=r"fps 20 is above the source rate of .* \(16.89 fps\)"):
        probe(path, ReadOptions(fps=20))
    out = write_output(tmp_path / "out.mp4", read_frames(path, ReadOptions(start_s=1.5, end_s=2.5)), part,
                       input_path=path)
    with av.open(str(out)) as c:
        assert [round(float(f.time), 3) for f in c.decode(c.streams.video[0])] == [0.08 * k for k in range(12)]
    gif = write_output(tmp_path / "out.gif", read_frames(path), info, input_path=path)
    from PIL import Image

    with Image.open(gif) as im:
        delays = [(im.seek(k), im.info["duration"])[1] for k in range(im.n_frames)]
    assert delays[23:27] == [40, 40, 80, 80] and sum(delays) == 2980   # 25 x 4 + 24 x 8 + 6 cs


def test_non_square_pixels_are_read_at_the_shape_they_display(tmp_path):
    """64x48 stored pixels of aspect 4/3 (anamorphic) display at 85x48: read there, so the model sees
    (and the output keeps) the picture's shape; a bar over stored columns 32-47 lies over 43-63."""
    path = tmp_path / "anamorphic.mp4"
    stored = np.zeros((48, 64, 3), np.uint8)
    stored[:, 32:48] = 255
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(4, 3)
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            frame.pts = i
            c.mux(stream.encode(frame))
        c.mux(stream.encode(None))
    frames, info = read_clip(path)
    assert info.source_size == (85, 48) and frames.shape == (3, 48, 85, 3)
    bright = np.flatnonzero(frames[0].mean(axis=(0, 2)) > 128)
    assert (bright.min(), bright.max()) == (43, 63)


def test_a_constant_rate_with_its_last_frame_held_is_constant(tmp_path):
    """30 frames exactly 1/30 s apart, the last held for two: ffmpeg's average rate counts the held
    frame (900/31 fps), yet no frame strays from the intervals' own rate, so no frame times are kept."""
    path = tmp_path / "held.mp4"
    base = Fraction(1, 30000)
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=30)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = base
        packets = []
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 8 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = 1000 * i, base
            packets += stream.encode(frame)
        packets += stream.encode(None)
        for packet in packets:
            packet.duration = 2000 if packet.pts == 29000 else 1000
            c.mux(packet)
    info = probe(path)
    assert info.n_frames == 30 and info.times is None
