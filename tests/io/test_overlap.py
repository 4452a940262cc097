"""videdit.io.overlap: reading ahead and writing beside the work, in threads. Overlap is shown
with events (a side waits, at most 10 s, for the other to have moved on), not with timings."""

import threading
from pathlib import Path

import numpy as np
import pytest

import videdit
from videdit import io
from videdit.io import WriteAborted, read_ahead, write_beside

WAIT_S = 10   # a bound on a wait that overlap makes immediate; without overlap it runs out


def test_the_next_item_is_read_while_this_one_is_used():
    asked = [threading.Event() for _ in range(3)]
    closed = []

    def produce():
        try:
            for i in range(3):
                asked[i].set()
                yield i
        finally:
            closed.append(True)

    seen = []
    for i in read_ahead(produce()):
        if i < 2:   # item i + 1 is produced while item i is still in use here
            assert asked[i + 1].wait(WAIT_S), i
        seen.append(i)
    assert seen == [0, 1, 2] and closed == [True]


def test_a_read_error_is_raised_where_it_happened():
    def produce():
        yield 0
        yield 1
        raise ValueError("frame 2 is broken")

    seen = []
    with pytest.raises(ValueError, match="frame 2 is broken"):
        for i in read_ahead(produce()):
            seen.append(i)
    assert seen == [0, 1]


def counted(made: list, closed: threading.Event, n: int = 100):
    """0..n-1, each appended to ``made`` as it is made; ``closed`` set once the generator ends."""
    try:
        for i in range(n):
            made.append(i)
            yield i
    finally:
        closed.set()


def test_stopping_early_stops_the_reader():
    produced, closed = [], threading.Event()
    before = threading.active_count()
    it = read_ahead(counted(produced, closed), depth=1)
    assert next(it) == 0
    it.close()
    assert closed.is_set() and threading.active_count() == before
    assert len(produced) <= 3   # one in use, one waiting, one in hand


def test_the_writer_gets_each_item_while_the_next_is_made():
    written = [threading.Event() for _ in range(3)]

    def write(items):
        out = []
        for i in items:
            out.append(i)
            written[i].set()
        return out

    def produce():
        for i in range(3):
            if i:   # item i - 1 is written while item i is being made
                assert written[i - 1].wait(WAIT_S), i
            yield i

    assert write_beside(write, produce()) == [0, 1, 2]


def test_an_edit_that_stops_early_aborts_the_writer(tmp_path):
    """The writer sees WriteAborted (an atomic writer leaves nothing), the edit's own error is raised."""
    seen = []

    def write(items):
        try:
            for i in items:
                seen.append(i)
        except WriteAborted as e:
            seen.append(str(e))
            raise
        return "complete"

    def produce():
        yield 0
        yield 1
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_beside(write, produce())
    assert seen == [0, 1, "the frames stopped before the last one"]
    frames = (np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3))).astype(np.uint8)

    def edit():
        yield frames
        raise RuntimeError("out of memory in window 2")

    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="window 2"):
        write_beside(lambda chunks: io.write_video(out, chunks, 8), edit())
    assert list(tmp_path.iterdir()) == []   # no output, no temporary file


def test_a_writer_error_stops_the_edit():
    made, closed = [], threading.Event()

    def write(items):
        next(items)
        raise OSError("no space left on device")

    before = threading.active_count()
    with pytest.raises(OSError, match="no space left"):
        write_beside(write, counted(made, closed))
    assert closed.is_set() and len(made) <= 4 and threading.active_count() == before


def test_an_edit_video_stopped_by_its_caller_writes_nothing(tiny, tmp_path):
    """An ``on_progress`` that raises after the first of three windows (a cancel): no output file
    and no thread left behind."""
    sample = Path(__file__).resolve().parents[2] / "samples" / "red-circle.mp4"
    out = tmp_path / "out.mp4"

    def cancel(stage, done, total):
        raise KeyboardInterrupt

    before = set(threading.enumerate())
    with pytest.raises(KeyboardInterrupt):
        videdit.edit_video(sample, out, source_prompt="a red circle", target_prompt="a blue circle", model=tiny,
                           steps=2, window=2, use_cache=False, read=io.ReadOptions(max_frames=6, size=(32, 32)),
                           on_progress=cancel)
    left = {t.name for t in set(threading.enumerate()) - before} - {"tqdm_monitor"}   # tqdm's own, once a process
    assert list(tmp_path.iterdir()) == [] and left == set()
