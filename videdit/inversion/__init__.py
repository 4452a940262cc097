"""Inversions: source latents -> an :class:`Inversion` the editors consume.

One method per module in this package; importing the package imports them all, which
registers them. ``videdit.pipeline.invert_frames`` runs one through the cache.
"""

import importlib
import pkgutil

from videdit.inversion.cache import InversionCache, cache_key
from videdit.inversion.record import Inversion
from videdit.inversion.registry import (INVERSIONS, InversionInputs, Replay, ReplayContext, get_inversion,
                                        make_config, register_inversion)

_INFRASTRUCTURE = {"cache", "record", "registry"}
for _m in pkgutil.iter_modules(__path__):
    if _m.name not in _INFRASTRUCTURE and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["INVERSIONS", "Inversion", "InversionCache", "InversionInputs", "Replay", "ReplayContext", "cache_key",
           "get_inversion", "make_config", "register_inversion"]
