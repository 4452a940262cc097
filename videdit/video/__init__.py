"""Temporal modules: what keeps an edited clip consistent from frame to frame. Each stacks on
any editor and any inversion; importing this package registers them."""

import importlib
import pkgutil

from videdit.video.registry import TEMPORAL, TemporalContext, TemporalPlan, get_temporal, register_temporal

_INFRASTRUCTURE = {"registry"}
for _m in pkgutil.iter_modules(__path__):
    if _m.name not in _INFRASTRUCTURE and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["TEMPORAL", "TemporalContext", "TemporalPlan", "get_temporal", "register_temporal"]
