"""Temporal modules and frame stages: what keeps an edited clip consistent from frame to frame,
behind one contract (:mod:`videdit.video.module`). Each stacks on any editor and any inversion;
the registry imports every module of this package on its first lookup, which registers them."""

from videdit.video.module import (TEMPORAL, TemporalContext, TemporalModule, TemporalPlan, TemporalSpec, TemporalStack,
                                  Window, WindowLatents, get_temporal, register_temporal)

__all__ = ["TEMPORAL", "TemporalContext", "TemporalModule", "TemporalPlan", "TemporalSpec", "TemporalStack", "Window",
           "WindowLatents", "get_temporal", "register_temporal"]
