"""The PyAV scan and decoder on the shared clips: counts, rates, sizes and the broken container."""

from fractions import Fraction

import pytest

from videdit.errors import VideditError
from videdit.io import video


@pytest.fixture(scope="module")
def videos(shared_data):
    return shared_data / "videos"


def test_scan_counts_a_sound_clip_and_flags_the_broken_one(videos):
    meta = video.scan(videos / "wolf.mp4")
    assert (meta.size, meta.fps, meta.n_frames, meta.has_audio, meta.rotation) == ((512, 512), 20, 40, False, 0)
    assert meta.sound and meta.format in video.DECORD_FORMATS
    with pytest.warns(video.BrokenVideoWarning):
        broken = video.scan(videos / "camel-broken-timestamps.mp4")
    assert not broken.sound and (broken.n_frames, broken.declared, broken.fps) == (7, 8, Fraction(2))
    assert video.choose_backend(videos / "wolf.mp4", meta, "pyav") == "pyav"
    assert video.choose_backend(videos / "camel-broken-timestamps.mp4", broken, "auto") == "pyav"


def test_pyav_frames_yields_only_the_asked_indices(videos):
    got = list(video.pyav_frames(videos / "truck.mp4", (0, 5, 20), 0))
    assert [i for i, _ in got] == [0, 5, 20] and all(a.shape == (512, 512, 3) for _, a in got)
    assert list(video.pyav_frames(videos / "truck.mp4", (), 0)) == []


def test_errors_are_one_line(tmp_path):
    (tmp_path / "x.mp4").write_text("not a video")
    with pytest.raises(VideditError, match="is not a readable video"):
        video.open_container(tmp_path / "x.mp4")
    assert video._first_line(RuntimeError("\n  \nfirst\nsecond")) == "first"
    assert video._first_line(KeyError()) == "KeyError"
