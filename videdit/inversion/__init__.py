"""Inversions: source latents -> an :class:`Inversion` the editors consume.

One method per module in this package; the registry imports them all on its first lookup,
which registers them. ``videdit.pipeline.invert_frames`` runs one through the cache.
"""

from videdit.inversion.cache import InversionCache
from videdit.inversion.record import Inversion
from videdit.inversion.registry import (INVERSIONS, InversionInputs, InversionMethod, Replay, ReplayContext,
                                        get_inversion, register_inversion)

__all__ = ["INVERSIONS", "Inversion", "InversionCache", "InversionInputs", "InversionMethod", "Replay",
           "ReplayContext", "get_inversion", "register_inversion"]
