"""Atomic writes: build the output under a temporary name next to it, rename on success."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _remove(path: Path) -> None:
    """Best effort: a temporary that cannot be removed (or was never made) must not hide the error
    that ended the write."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden, unused name in ``path``'s folder that keeps its suffix (writers pick the format
    by suffix), e.g. ``out.mp4`` -> ``.out.videdit-tmp-1a2b3c4d.mp4``."""
    return path.with_name(f".{path.stem}.videdit-{tag}-{secrets.token_hex(4)}{path.suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike, *, replace_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for the caller to create (a file or a folder).

    When the block succeeds the temporary is renamed onto ``path`` (``os.replace``, atomic on
    one file system); when it raises, even with KeyboardInterrupt, the temporary is removed and
    ``path`` is left as it was. A folder can replace an existing non-empty folder only with
    ``replace_dir=True``: the old one is moved aside, the new one renamed in, the old deleted.
    """
    path = Path(os.path.abspath(path))   # "." and ".." name their folder
    tmp = temp_sibling(path)
    try:
        yield tmp
        if replace_dir and path.is_dir() and not path.is_symlink() and any(path.iterdir()):
            old = temp_sibling(path, "old")
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
