"""Progress bars (videdit/progress.py): tqdm's own, and as a log's lines under bars_as_lines."""

from __future__ import annotations

import io

from videdit import progress
from videdit.progress import bars_as_lines, progress_bar


def test_bars_as_lines_write_plain_lines_and_nested_bars_nothing(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    with bars_as_lines():
        outer = progress_bar(total=3, desc="frames", mininterval=0)
        for _ in range(3):
            inner = progress_bar(range(5), desc="denoise", leave=False)
            assert sum(1 for _ in inner) == 5 and inner.n == 5   # counted (the web page reads it), not written
            outer.update()
        outer.close()
    assert progress.LOG is False   # as it was
    lines = err.getvalue().split("\n")
    assert "\r" not in err.getvalue() and "\x1b" not in err.getvalue() and "denoise" not in err.getvalue()
    # the first line, the last; at most one between every LOG_INTERVAL (10 s) seconds
    assert [line.split("|")[0] for line in lines] == ["frames:   0%", "frames: 100%", ""]
    assert all(line == line.rstrip() and len(line) <= 100 for line in lines)


def test_outside_the_block_a_bar_is_tqdms(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    for _ in progress_bar(range(2), desc="denoise", leave=False, file=err, mininterval=0):
        pass
    assert "\rdenoise:  50%" in err.getvalue()   # redrawn in place, as on a terminal
