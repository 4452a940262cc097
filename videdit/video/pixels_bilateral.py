"""After decoding: every frame its own source under one grid of colour maps fitted from the
keyframes (bilateral guided upsampling, Chen et al. 2016).

Nothing moves along a flow: one grid of affine colour maps over (y, x, luma)
(:mod:`videdit.video.bilateral`) is fitted from the keyframes, their source to their decoded
edit, and every frame becomes its own source under it. A surface's colour then depends on its
source colour and (in cells of ``cell`` times the shorter side) on where it is, not on the
frame, so it neither drifts between keyframes nor carries a flow's mistakes; keyframes that
disagree are averaged. Only the keyframes are inverted, denoised and decoded (``makes_frames``):
they attend only to each other, so their edit is the one they get when every frame runs.

``scope="clip"`` (default): one grid from all of the clip's keyframes; the frames are made in a
second pass over the source once every window is edited. ``scope="window"``: each window is
made at once from its keyframes and the earlier windows' (at ``memory`` times their weight),
the maps going linearly across the window from the earlier window's to its own, for a clip
whose look changes along it. The default cell, 1, is as large as the frame's shorter side;
an edit that treats two regions of one colour differently needs smaller cells (e.g. 0.25).
For appearance edits: a changed shape comes out as a recolouring of the source's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from videdit.errors import VideditError
from videdit.video import bilateral
from videdit.video.keyframes import Keyframes
from videdit.video.module import TemporalModule, Window, WindowLatents, find, register_temporal

NAME = "pixels_bilateral"
SCOPES = ("clip", "window")


@dataclass(frozen=True)
class PixelsBilateralConfig:
    cell: float = 1.0          # grid cell, a fraction of the shorter side
    bins: int = 4              # luma cells
    scope: str = "clip"        # one grid for the clip, or one a window (module doc)
    memory: float = 1.0        # scope="window": weight of the earlier windows' keyframes (0: none)

    def __post_init__(self):
        if not 0 < self.cell <= 1:
            raise VideditError(f"{NAME} cell must be a fraction of the frame's shorter side in (0, 1], got {self.cell}")
        if not isinstance(self.bins, int) or not 1 <= self.bins <= 64:
            raise VideditError(f"{NAME} bins must be a whole number in [1, 64], got {self.bins!r}")
        if self.scope not in SCOPES:
            raise VideditError(f"{NAME} scope must be one of {list(SCOPES)}, got {self.scope!r}")
        if not 0 <= self.memory <= 1:
            raise VideditError(f"{NAME} memory must be in [0, 1], got {self.memory}")
        if self.memory != 1 and self.scope == "clip":
            raise VideditError(f"{NAME} memory weighs earlier windows for scope 'window'; with 'clip' every keyframe "
                               f"of the clip counts the same")


@register_temporal
class PixelsBilateral(TemporalModule):
    """After decoding, every frame its own source under colour maps fitted from the keyframes (bilateral grid)."""

    name = NAME
    config_class = PixelsBilateralConfig
    order = 10
    makes_frames = True
    splits = True    # scope "clip": the second pass reads only the clip's solved maps (frozen)

    def __init__(self, config: PixelsBilateralConfig):
        super().__init__(config)
        self.keyframes: Keyframes | None = None
        self.grid: bilateral.ColourGrid | None = None   # the keyframes so far (scope clip), or the window before's
        self.maps: np.ndarray | None = None             # the clip's solved maps (second pass)

    @property
    def second_pass(self) -> bool:
        return self.config.scope == "clip"

    def bind(self, modules) -> None:
        self.keyframes = find(modules, Keyframes, NAME)

    def frames_to_edit(self, window: Window) -> list[int]:
        return self.keyframes.frames_to_edit(window)

    def finish_window(self, window: Window, frames: np.ndarray, latents: WindowLatents) -> np.ndarray:
        source = window.source(NAME)
        size = frames.shape[1:3]
        shape = bilateral.grid_shape(size, self.config.cell, self.config.bins)
        earlier = self.grid
        if earlier is not None and (earlier.shape != shape or earlier.size != size):
            raise VideditError(f"{NAME} needs every window of a clip at one size, got {size[1]}x{size[0]} after "
                               f"{earlier.size[1]}x{earlier.size[0]}")
        if self.config.scope == "clip" and earlier is not None:
            grid = earlier                                            # one grid for the clip, added to in place
        else:
            grid = bilateral.ColourGrid(shape, size)
            if earlier is not None and self.config.memory > 0:
                grid += earlier.scaled(self.config.memory)
        for g in self.keyframes.layout(window).keys:
            grid.add(source[g - window.start], frames[g - window.start])
        self.grid = grid
        if self.config.scope == "clip":
            return frames                                             # the frames come in the second pass
        maps = grid.solve()
        if earlier is None:
            return np.stack([bilateral.apply(maps, shape, f) for f in source])
        # from the earlier window's maps to this one's across the window, so that the border is no jump
        before, n = earlier.solve(), len(source)
        return np.stack([bilateral.apply(before + (i + 1) / n * (maps - before), shape, f)
                         for i, f in enumerate(source)])

    def frozen(self) -> PixelsBilateral:
        """The clip's grid and its solved maps, without the keyframes' module (scope "clip")."""
        if not self.second_pass:
            raise VideditError(f"{NAME} scope 'window' carries its colour maps from window to window; "
                               f"the clip runs on one worker")
        if self.grid is None:
            raise VideditError(f"{NAME}: the first pass edited no window")
        out = PixelsBilateral(self.config)
        out.grid = self.grid
        out.maps = self.maps if self.maps is not None else self.grid.solve()
        return out

    def finish_clip(self, window: Window) -> np.ndarray:
        source = window.source(NAME)
        if self.grid is None:
            raise VideditError(f"{NAME}: the second pass came before any window was edited")
        if source.shape[1:3] != self.grid.size:
            raise VideditError(f"{NAME} the clip's colour maps were fitted at {self.grid.size[1]}x{self.grid.size[0]}, "
                               f"got frames of {source.shape[2]}x{source.shape[1]}")
        if self.maps is None:
            self.maps = self.grid.solve()
        return np.stack([bilateral.apply(self.maps, self.grid.shape, f) for f in source])
