"""ReadOptions' checks and the frame arithmetic: sizes, ranges, selected indices and time spans."""

from fractions import Fraction

import pytest

from videdit.errors import VideditError
from videdit.io import ReadOptions
from videdit.io.options import as_fraction, frame_range, resized_size, select_indices, time_span


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_frames": 0}, "max_frames must be an integer >= 1"),
        ({"max_frames": -3}, "max_frames must be an integer >= 1"),
        ({"stride": 0}, "stride must be an integer >= 1"),
        ({"stride": 2, "fps": 10}, "either stride .* or a target fps"),
        ({"start_frame": 5, "start_s": 1.0}, "either in frames .* or in seconds"),
        ({"start_frame": 5, "end_frame": 5}, "end_frame must be an integer > start_frame"),
        ({"start_s": 2.0, "end_s": 1.0},
         r"the end \(1.0 s: --end, end_s\) must be after the start \(2.0 s: --start, start_s\)"),
        ({"size": 0}, "size must be >= 1"),
        ({"size": (64,)}, "size must be an int"),
        ({"chunk_size": 0}, "chunk_size must be"),
        ({"fps": -1}, "fps must be a number > 0"),
        ({"backend": "opencv"}, "unknown backend 'opencv'"),
    ],
)
def test_invalid_options(kwargs, message):
    with pytest.raises(VideditError, match=message):
        ReadOptions(**kwargs)


def test_size_list_from_yaml_becomes_tuple():
    assert ReadOptions(size=[64, 32]).size == (64, 32)


def test_as_fraction():
    assert as_fraction(29.97002997) == Fraction(30000, 1001) and as_fraction(29.97) == Fraction(2997, 100)
    assert as_fraction(25) == 25 and as_fraction(Fraction(24000, 1001)) == Fraction(24000, 1001)


def test_resized_size():
    assert resized_size((288, 512), 256) == (256, 455)                  # 512 * 256 / 288 = 455.1
    assert resized_size((512, 288), 256) == (455, 256)                  # landscape: the height is short
    assert resized_size((3, 5), 1) == (1, 2)                            # 5/3 = 1.67 rounds up
    assert resized_size((2, 3), 1) == (1, 2)                            # 1.5: half rounds up
    assert resized_size((640, 480), (100, 40)) == (100, 40) and resized_size((640, 480), None) == (640, 480)


def test_frame_range():
    fps = Fraction(10)
    assert frame_range(40, fps, ReadOptions(), "c") == (0, 40)
    assert frame_range(40, fps, ReadOptions(start_frame=35, end_frame=400), "c") == (35, 40)   # clamped
    assert frame_range(40, fps, ReadOptions(start_s=1.0, end_s=2.05), "c") == (10, 21)       # starts in [1, 2.05)
    assert frame_range(40, fps, ReadOptions(start_s=0.31), "c") == (4, 40)
    with pytest.raises(VideditError, match=r"start frame 40 \(--start-frame, start_frame\) is past the end of c"):
        frame_range(40, fps, ReadOptions(start_frame=40), "c")
    with pytest.raises(VideditError, match="selects no frame"):
        frame_range(40, fps, ReadOptions(start_s=1.01, end_s=1.09), "c")
    with pytest.raises(VideditError, match="single image"):
        frame_range(1, None, ReadOptions(start_s=0.5), "c")


def test_select_indices_and_time_span():
    fps = Fraction(30000, 1001)
    idx, out = select_indices(91, fps, ReadOptions(fps=10), "c")        # every 2.997 frames, nearest
    assert out == 10 and idx[:5] == (0, 3, 6, 9, 12) and idx[-1] == 90 and len(idx) == 31
    idx, out = select_indices(40, Fraction(20), ReadOptions(start_frame=2, stride=3, max_frames=4), "c")
    assert idx == (2, 5, 8, 11) and out == Fraction(20, 3)
    assert time_span(idx, Fraction(20), out, 40) == (0.1, pytest.approx(0.1 + 4 * 3 / 20))
    assert time_span((38, 39), Fraction(20), Fraction(5), 40) == (1.9, 2.0)   # capped at the clip's end
    assert select_indices(1, None, ReadOptions(), "img") == ((0,), None) and time_span((0,), None, None, 1) == (0, 0)
    with pytest.raises(VideditError, match="above the source rate"):
        select_indices(40, Fraction(10), ReadOptions(fps=24), "c")
