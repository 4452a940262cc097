"""Shared by the exact inversions: their replay is exact only at the guidance they inverted at."""

from __future__ import annotations

import logging

from videdit.inversion.registry import ReplayContext

log = logging.getLogger("videdit.inversion")


def warn_if_guidance_differs(method: str, inverted_at: float | None, ctx: ReplayContext) -> None:
    """Warn when the edit samples at another guidance scale than the inversion used: the
    replay then no longer gives back the source exactly."""
    if ctx.guidance is not None and inverted_at is not None and ctx.guidance != inverted_at:
        log.warning("%s inverted at guidance %g but the edit samples at %g, so the source is no longer "
                    "reconstructed exactly; pass inversion_params={'guidance': %g} to match", method, inverted_at,
                    ctx.guidance, ctx.guidance)
