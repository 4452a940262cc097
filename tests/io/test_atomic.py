"""Atomic writes: success renames the temporary onto the target; failure leaves no trace."""

from pathlib import Path

import pytest

from videdit.io import atomic_path
from videdit.io.atomic import temp_sibling


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path(tmp_path):
    target = tmp_path / "x.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".txt" and not tmp.exists()
        tmp.write_text("done")
    assert target.read_text() == "done" and leftovers(tmp_path) == ["x.txt"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "done" and leftovers(tmp_path) == ["x.txt"]


def test_temp_sibling_is_hidden_beside_the_path_and_keeps_the_suffix():
    a, b = temp_sibling(Path("/d/out.mp4")), temp_sibling(Path("/d/out.mp4"), "old")
    assert a.parent == Path("/d") and a.suffix == ".mp4" and a.name.startswith(".out.videdit-tmp-")
    assert b.name.startswith(".out.videdit-old-") and a != temp_sibling(Path("/d/out.mp4"))


def test_a_folder_replaces_a_folder_only_when_asked(tmp_path):
    target = tmp_path / "frames"
    target.mkdir()
    (target / "old.png").write_bytes(b"old")
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "new.png").write_bytes(b"new")
    assert leftovers(target) == ["old.png"] and leftovers(tmp_path) == ["frames"]
    with atomic_path(target, replace_dir=True) as tmp:
        tmp.mkdir()
        (tmp / "new.png").write_bytes(b"new")
    assert leftovers(target) == ["new.png"] and leftovers(tmp_path) == ["frames"]
    with pytest.raises(ValueError):
        with atomic_path(target, replace_dir=True) as tmp:
            tmp.mkdir()
            raise ValueError("half-written")
    assert leftovers(target) == ["new.png"] and leftovers(tmp_path) == ["frames"]
