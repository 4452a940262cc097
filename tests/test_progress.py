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


def test_a_batchs_display_in_a_log_is_a_line_an_event(monkeypatch):
    """`videdit batch ... 2> log`: the jobs bar and its running jobs as plain lines, one at each event."""
    from types import SimpleNamespace

    from videdit.batch import _Display

    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    with bars_as_lines():
        display = _Display(total=1, enabled=True)
        display.start(SimpleNamespace(index=0, name="fox"), "local")
        display.progress(0, "local", "edit", 2, 4)
        display.finish(SimpleNamespace(index=0, name="fox", status="done", note=None, error=None))
        display.close()
    text = err.getvalue()
    assert "\r" not in text and "\x1b" not in text
    shown = [(line.split("|")[0], line.partition(", running ")[2].rstrip("]")) for line in text.splitlines()]
    assert shown == [("jobs:   0%", ""), ("jobs:   0%", "fox@local"), ("jobs:   0%", "fox@local edit 2/4 frames"),
                     ("jobs: 100%", ""), ("jobs: 100%", "")], text
