"""Progress bars: tqdm's, and a log's view of them.

On a terminal the bars are tqdm's own: the clip's frames, and nested under them a window's
inversion and denoising, redrawn in place. Where stderr is a file or a pipe (a log, a job
scheduler's output) the redrawing leaves carriage returns and cursor moves in the text, so the
command line sets :data:`LOG` (:func:`bars_as_lines`): then the outer bars write a plain line
each at most every :data:`LOG_INTERVAL` seconds, and the nested ones still count (the web page
reads every bar) but write nothing. `videdit serve` (:data:`SILENT`) writes no bar at all there: its
page shows them, and its log has a line a run. Library calls keep tqdm's behaviour.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Iterator

from tqdm.auto import tqdm

LOG = False           # set by the command line where stderr is not a terminal
LOG_INTERVAL = 10.0   # seconds between a logged bar's lines
SILENT = False        # under LOG: no bar writes (`serve`: its page shows them)


class _Nowhere:
    """A nested bar's writes under LOG."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


class _Lines:
    """A bar's writes as lines of a log: tqdm starts each redraw with a carriage return and pads it
    with spaces over the previous one."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``; under :data:`LOG` a bar on stderr (no ``file`` given) with ``leave=False``
    (nested), or any under :data:`SILENT`, writes nothing (at tqdm's pace: an iterated bar's ``update`` runs
    then, and a watcher of it with it) and the others a line each at most every :data:`LOG_INTERVAL` seconds
    (and at each forced refresh)."""
    if LOG and not kwargs.get("disable") and kwargs.get("file") is None:
        quiet = SILENT or kwargs.get("leave", True) is False
        kwargs.update(ascii=True, ncols=100, dynamic_ncols=False, file=_Nowhere() if quiet else _Lines(sys.stderr))
        if not quiet:
            kwargs["mininterval"] = max(kwargs.get("mininterval", 0.1), LOG_INTERVAL)
    return tqdm(iterable, **kwargs)


@contextmanager
def bars_as_lines(on: bool = True, silent: bool = False) -> Iterator[None]:
    """:data:`LOG` set to ``on`` (and :data:`SILENT` to ``silent``) inside the block, as they were afterwards."""
    global LOG, SILENT
    saved, (LOG, SILENT) = (LOG, SILENT), (on, silent)
    try:
        yield
    finally:
        LOG, SILENT = saved
