"""Typed, frozen options from what a user wrote (CLI, YAML, Python): a mapping of option
names to values becomes the method's config dataclass, with one-line errors naming the
unknown options and the values of the wrong type."""

from __future__ import annotations

import collections.abc
import dataclasses
import numbers
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from videdit.errors import VideditError


def make_config(config_cls: type, params: Mapping[str, Any] | None, what: str):
    """Build a frozen config from a dict, naming the unknown keys and the accepted ones, and
    the options whose value is not of the field's type (a string where a number goes)."""
    params = dict(params or {})
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise VideditError(f"{what} does not take {', '.join(unknown)}; it takes {sorted(fields) or 'no options'}")
    try:
        hints = typing.get_type_hints(config_cls)
    except (NameError, TypeError):   # a hint that does not resolve here: the config's own checks stand
        hints = {}
    for name, value in params.items():
        if name not in hints or _fits(hints[name], value) is not False:
            continue
        if isinstance(value, str) and _fits(hints[name], 0.5):   # YAML reads 1e-3 as a string
            try:
                params[name] = float(value)
                continue
            except ValueError:
                pass
        raise VideditError(f"{what} {name} must be {_describe(hints[name])}, got {value!r}")
    return config_cls(**params)


_PLAIN = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", type(None): "none"}


def _fits(hint, value) -> bool | None:
    """Whether ``value`` is of type ``hint``, for plain hints (numbers, strings, flags, lists,
    mappings, their unions); None where the hint is none of those."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        found = [_fits(h, value) for h in typing.get_args(hint)]
        return True if True in found else None if None in found else False
    if hint is bool:
        return isinstance(value, (bool, np.bool_)) or (isinstance(value, int) and value in (0, 1))
    if hint in (int, float):
        kind = numbers.Integral if hint is int else numbers.Real
        return isinstance(value, kind) and not isinstance(value, (bool, np.bool_))
    if hint is str:
        return isinstance(value, (str, os.PathLike))      # a path where a file name goes
    if hint is type(None):
        return value is None
    if hint in (tuple, list) or origin in (tuple, list):
        # a lone string may stand for a list of one: the config's own checks say (e.g. layer patterns)
        return None if isinstance(value, str) else isinstance(value, (tuple, list))
    if hint is dict or origin in (dict, collections.abc.Mapping):
        return isinstance(value, collections.abc.Mapping)
    return None


def _describe(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if hint in (tuple, list) or typing.get_origin(hint) in (tuple, list):
        return "a list"
    if hint is dict or typing.get_origin(hint) in (dict, collections.abc.Mapping):
        return "a mapping of options"
    return _PLAIN.get(hint, getattr(hint, "__name__", str(hint)))


PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"   # a source checkout's presets; none in a wheel


def preset_path(spec: str | os.PathLike, base: str | os.PathLike = ".") -> Path:
    """The YAML file ``--config SPEC`` (a job's ``config:``) names: a path (relative to ``base``), or
    a preset's name, ``configs/NAME.yaml`` (``tokenflow``). One line naming the presets when neither."""
    path = Path(base) / spec
    if path.exists() or Path(spec).suffix or len(Path(spec).parts) > 1:
        return path
    if (PRESETS_DIR / f"{spec}.yaml").exists():
        return PRESETS_DIR / f"{spec}.yaml"
    import difflib

    names = sorted(f.stem for f in PRESETS_DIR.glob("*.yaml"))
    close = difflib.get_close_matches(str(spec), names, n=1)
    raise VideditError(f"no config file {spec} and no preset of that name"
                       + (f" (did you mean {close[0]!r}?)" if close else "")
                       + (f"; the presets: {', '.join(names)}" if names else "; give the YAML file's path"))
