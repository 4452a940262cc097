"""Reading and writing beside the work: while the model edits one window, the next is decoded
and the edited ones are encoded, each in a thread of its own (PyAV's decoding and encoding,
OpenCV's resizing and the model's kernels release the GIL, so they overlap).

Both keep at most ``depth`` chunks waiting between the threads, so memory stays flat; an
error on either side ends both and is raised in the caller's thread, and an edit that stops
early (an error, Ctrl-C, a cancel) reaches the writer as :class:`WriteAborted`, so an atomic
writer leaves no output behind.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_DONE, _ABORT = object(), object()
_POLL_S = 0.05   # how often a blocked hand-over looks whether the other side has gone


class WriteAborted(Exception):
    """Raised inside a writer fed by :func:`write_beside` when the frames stop coming early."""


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def _put(q: queue.Queue, item: object, going: Callable[[], bool]) -> bool:
    """Put ``item`` once there is room; False (not put) as soon as ``going()`` turns false."""
    while going():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _close(it: object) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


def read_ahead(chunks: Iterable[T], depth: int = 1, name: str = "videdit-read") -> Iterator[T]:
    """The items of ``chunks``, produced in a thread up to ``depth`` ahead of the consumer. An
    error in producing is raised here at the item where it happened; stopping early (closing
    this iterator) stops the thread after the item it is on and closes ``chunks``."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    running = lambda: not stop.is_set()   # noqa: E731

    def produce() -> None:
        try:
            for item in chunks:
                if not _put(q, item, running) or stop.is_set():   # stopped: read no further
                    return
            _put(q, _DONE, running)
        except BaseException as e:   # handed to the consumer, raised there
            _put(q, _Failed(e), running)
        finally:
            _close(chunks)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        while thread.is_alive():   # take what it waits to hand over, so that it sees the stop at once
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            thread.join(_POLL_S)


def write_beside(write: Callable[[Iterator[T]], R], chunks: Iterable[T], depth: int = 1,
                 name: str = "videdit-write") -> R:
    """``write(items)`` run in a thread while this thread produces ``chunks`` (the edit): the
    writer gets each item once it is made, and its result is returned. An error in producing
    (KeyboardInterrupt too) reaches the writer as :class:`WriteAborted` and is raised here once
    the writer has cleaned up; an error in the writer stops the production at the next item,
    closes ``chunks`` and is raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    result: list = []
    failed: list[BaseException] = []

    def items() -> Iterator[T]:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if item is _ABORT:
                raise WriteAborted("the frames stopped before the last one")
            yield item

    def run() -> None:
        try:
            result.append(write(items()))
        except BaseException as e:
            failed.append(e)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        for item in chunks:
            if not _put(q, item, thread.is_alive):
                break   # the writer has stopped: its error is raised below
        else:
            _put(q, _DONE, thread.is_alive)
    except BaseException:
        _put(q, _ABORT, thread.is_alive)
        thread.join()
        raise
    finally:
        _close(chunks)
    thread.join()
    if failed:
        raise failed[0]
    if not result:
        raise RuntimeError(f"{name}: the writer ended without a result or an error")
    return result[0]
