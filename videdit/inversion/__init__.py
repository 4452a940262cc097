"""Inversions: source latents -> an :class:`Inversion` the editors consume.

Importing this package registers every method; ``invert`` runs one, through the cache.
"""

from videdit.inversion import ddim  # noqa: F401  (registers "ddim")
from videdit.inversion.cache import InversionCache, cache_key
from videdit.inversion.record import Inversion
from videdit.inversion.registry import INVERSIONS, InversionInputs, get_inversion, make_config, register_inversion

__all__ = ["INVERSIONS", "Inversion", "InversionCache", "InversionInputs", "cache_key", "get_inversion",
           "make_config", "register_inversion"]
