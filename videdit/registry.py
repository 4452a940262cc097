"""What the registries of inversions, editors and temporal modules share: the one-line
summary ``videdit methods`` prints, and the lookup whose error lists the registered names."""

from __future__ import annotations

from typing import Callable, Mapping, TypeVar

from videdit.errors import VideditError

Spec = TypeVar("Spec")


def summary_of(fn: Callable, name: str) -> str:
    """The first line of ``fn``'s docstring, or ``name`` when it has none."""
    return (fn.__doc__ or name).strip().splitlines()[0]


def lookup(table: Mapping[str, Spec], name: str, kind: str) -> Spec:
    """``table[name]``, or a VideditError naming the ``kind`` and every registered name."""
    if name not in table:
        raise VideditError(f"unknown {kind} {name!r}; choose from {sorted(table)}")
    return table[name]
