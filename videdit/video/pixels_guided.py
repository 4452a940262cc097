"""After decoding: the keyframes' local colour transforms carried to every frame's own source.

Instead of the keyframes' pixels (``pixels_warp``), their local colour transforms (the colour
guided filter's coefficients, :mod:`videdit.video.guided`, fitted from each keyframe's source
to its edit) are warped along the source's flow and blended the same way, and applied to each
frame's *own* source pixels; keyframes too become their source under their own transform.
Outlines then are each frame's own, not a keyframe's moved by a flow that is least right at
motion boundaries. For appearance edits (colour, tone, material) only: a changed shape comes
out as a recolouring of the source's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from videdit.errors import VideditError
from videdit.video import guided
from videdit.video.keyframe_flow import flow_config
from videdit.video.module import register_temporal
from videdit.video.pixels_warp import PixelsWarp

NAME = "pixels_guided"


@dataclass(frozen=True)
class PixelsGuidedConfig:
    radius: int = 0                          # window radius in pixels (0: 1/8 of the shorter side)
    eps: float = 1e-3                        # regularisation (colours in [0, 1])
    flow: Mapping[str, Any] | None = None    # options of videdit.video.flow.FlowConfig

    def __post_init__(self):
        if not isinstance(self.radius, int) or self.radius < 0:
            raise VideditError(f"{NAME} radius must be a whole number of pixels >= 0 (0: auto), got {self.radius!r}")
        if not 0 < self.eps <= 1:
            raise VideditError(f"{NAME} eps must be in (0, 1], got {self.eps}")
        flow_config(self.flow, NAME)


@register_temporal
class PixelsGuided(PixelsWarp):
    """After decoding, every frame its own source under the keyframes' colour transforms carried along the flow."""

    name = NAME
    config_class = PixelsGuidedConfig
    renders_keyframes = True
    renders_unseen = True

    def field(self, g: int, source: np.ndarray, edited: np.ndarray) -> np.ndarray:
        """Frame g's colour transform, stacked (H, W, 12)."""
        radius = self.config.radius or guided.auto_radius(edited.shape[:2])
        return guided.fit(source, edited, radius, self.config.eps).stacked()

    def render(self, g: int, field: np.ndarray, source: np.ndarray) -> np.ndarray:
        return guided.apply(guided.ColourTransform.unstack(field), source)
