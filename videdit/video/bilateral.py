"""Affine colour maps in a bilateral grid, fitted from edited keyframes, for every frame.

Bilateral guided upsampling (Chen, Adams, Wadhwa & Hasinoff 2016, "Bilateral Guided
Upsampling", Sec. 3) models an image operator as a grid over (y, x, luma) whose nodes hold
affine colour maps: a pixel's output is its own colour under the map trilinearly sliced at
its position and luma,

    out(p) = sum_n w_n(p) A_n [I(p); 1],   A_n a 3x4 affine map, w_n the trilinear weights,

and each ``A_n`` is the least-squares fit of the operator's output from its input over the
pixels the node weighs (here with a ridge towards one affine map fitted over the whole grid,
in place of the paper's smoothness term: a node that saw little keeps close to it).

Here the operator is the edit and the data are the keyframes: their sums of ``[I; 1][I; 1]^T``
and ``edit [I; 1]^T`` per node add up over keyframes, so one grid is fitted from all of a
clip's keyframes (:class:`ColourGrid`; ``scaled`` weighs earlier ones down) and applied to
every frame's *own* source pixels. A frame's output then depends only on where a pixel is and
what colour it has in the source, not on the frame's time or on a flow: a surface keeps its
colour as it moves within a cell, its outlines are the frame's own, and what two keyframes
disagree on (one edited half-way) is averaged, not blended across the span. The grid is
coarse in space (cells of ``cell`` of the frame's shorter side), so an object moving between
cells meets maps fitted where the keyframes had it or, where they had nothing of its colour,
the ridge's whole-frame map. For appearance edits (colour, tone) only: a changed shape comes
out as a recolouring of the source's shape. The ``pixels_bilateral`` stage
(:mod:`videdit.video.pixels_bilateral`) uses it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from videdit.errors import VideditError

LUMA = np.array([0.299, 0.587, 0.114], np.float32)   # ITU-R BT.601 weights, colours in [0, 1]


@dataclass(frozen=True)
class GridShape:
    """Nodes along y, x and luma."""

    ny: int
    nx: int
    nl: int

    @property
    def nodes(self) -> int:
        return self.ny * self.nx * self.nl


def grid_shape(size: tuple[int, int], cell: float, bins: int) -> GridShape:
    """The grid for frames of ``size`` (H, W): cells of ``cell`` times the shorter side (at
    least 1 node along each side, 2 where the cells are smaller than the side) and ``bins``
    luma cells."""
    if not 0 < cell <= 1:
        raise VideditError(f"bilateral grid cell must be a fraction of the frame's shorter side in (0, 1], got {cell}")
    if bins < 1:
        raise VideditError(f"bilateral grid needs at least 1 luma bin, got {bins}")
    side = cell * min(size)
    ny, nx = (max(1, round(s / side)) + 1 if s > side else 1 for s in size)
    return GridShape(ny, nx, bins + 1)


def _homogeneous(frame: np.ndarray) -> np.ndarray:
    """(H*W, 4): colours in [0, 1] and a 1."""
    colour = frame.reshape(-1, 3).astype(np.float32) / 255
    return np.concatenate([colour, np.ones_like(colour[:, :1])], axis=1)


def _corners(x: np.ndarray, size: tuple[int, int], shape: GridShape) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's surrounding nodes and trilinear weights, for a frame of ``size`` (H, W)
    whose colours ``x`` (H*W, 4) :func:`_homogeneous` gives: (K, H*W) int64 and float32, K = 8
    corners, halved for each axis with one node (where the second corner would weigh 0: the
    default grid of a square frame has nodes along luma only, K = 2)."""
    h, w = size
    ys, xs = np.divmod(np.arange(h * w), w)
    coords = (((ys + 0.5) / h * (shape.ny - 1)), ((xs + 0.5) / w * (shape.nx - 1)), x[:, :3] @ LUMA * (shape.nl - 1))
    axes = []   # per axis: [(node index along it, weight)] for its one or two corners
    for c, n in zip(coords, (shape.ny, shape.nx, shape.nl)):
        if n == 1:
            axes.append([(np.zeros(len(c), np.int64), np.ones(len(c), np.float32))])
            continue
        low = np.clip(np.floor(c), 0, n - 2).astype(np.int64)
        frac = (c - low).astype(np.float32)
        axes.append([(low, 1 - frac), (low + 1, frac)])
    index, weight = [], []
    for (iy, wy), (ix, wx), (il, wl) in itertools.product(*axes):
        index.append((iy * shape.nx + ix) * shape.nl + il)
        weight.append(wy * wx * wl)
    return np.stack(index), np.stack(weight)


class ColourGrid:
    """Least-squares sums of an affine colour map per node, added up over (source, edit) pairs."""

    def __init__(self, shape: GridShape, size: tuple[int, int]):
        self.shape, self.size = shape, tuple(size)
        self.xx = np.zeros((shape.nodes, 4, 4), np.float64)     # sum of w [I;1][I;1]^T
        self.yx = np.zeros((shape.nodes, 3, 4), np.float64)     # sum of w edit [I;1]^T

    def add(self, source: np.ndarray, edited: np.ndarray) -> "ColourGrid":
        """Add one keyframe: uint8 ``source`` and ``edited`` (H, W, 3) of the grid's size."""
        if source.shape != edited.shape or source.shape[:2] != self.size or source.shape[-1] != 3:
            raise VideditError(f"bilateral grid of {self.size[1]}x{self.size[0]} needs two (H, W, 3) frames of its "
                               f"size, got {source.shape} and {edited.shape}")
        x = _homogeneous(source)                                 # (P, 4)
        index, w = _corners(x, self.size, self.shape)            # (K, P) each
        y = edited.reshape(-1, 3).astype(np.float32) / 255       # (P, 3)
        xx = (x[:, :, None] * x[:, None, :]).reshape(-1, 16)     # (P, 16)
        yx = (y[:, :, None] * x[:, None, :]).reshape(-1, 12)     # (P, 12)
        n = self.shape.nodes
        for i, wi in zip(index, w):
            self.xx += np.stack([np.bincount(i, wi * xx[:, k], n) for k in range(16)], -1).reshape(n, 4, 4)
            self.yx += np.stack([np.bincount(i, wi * yx[:, k], n) for k in range(12)], -1).reshape(n, 3, 4)
        return self

    def scaled(self, factor: float) -> "ColourGrid":
        """A copy with every sum times ``factor`` (an earlier window's keyframes, weighed down)."""
        out = ColourGrid(self.shape, self.size)
        out.xx, out.yx = self.xx * factor, self.yx * factor
        return out

    def __iadd__(self, other: "ColourGrid") -> "ColourGrid":
        if other.shape != self.shape or other.size != self.size:
            raise VideditError(f"cannot add a bilateral grid of {other.shape} for {other.size} to one of "
                               f"{self.shape} for {self.size}")
        self.xx += other.xx
        self.yx += other.yx
        return self

    def solve(self, ridge: float = 1.0) -> np.ndarray:
        """(nodes, 3, 4) affine maps: each node's fit, pulled towards the whole grid's one map by
        ``ridge`` pixels' worth of weight (Chen et al. 2016 use a smoothness term instead)."""
        if not ridge > 0:
            raise VideditError(f"bilateral grid ridge must be > 0 (a node that saw no pixel needs it), got {ridge}")
        xx, yx = self.xx.sum(0), self.yx.sum(0)
        if xx[3, 3] <= 0:
            raise VideditError("bilateral grid has no keyframe pixels to fit; add a keyframe first")
        eye = np.eye(4)
        whole = np.linalg.solve(xx + 1e-6 * xx[3, 3] * eye, yx.T).T                 # (3, 4)
        maps = np.linalg.solve(self.xx + ridge * eye, (self.yx + ridge * whole).transpose(0, 2, 1))
        return maps.transpose(0, 2, 1).astype(np.float32)                          # (nodes, 3, 4)


def apply(maps: np.ndarray, shape: GridShape, source: np.ndarray) -> np.ndarray:
    """uint8 ``source`` (H, W, 3) under the grid's maps (:meth:`ColourGrid.solve`) -> uint8 (H, W, 3)."""
    x = _homogeneous(source)                                     # (P, 4)
    index, w = _corners(x, source.shape[:2], shape)              # (K, P) each
    out = np.zeros((x.shape[0], 3), np.float32)
    for i, wi in zip(index, w):                                  # the trilinear slice, a corner at a time
        out += wi[:, None] * np.einsum("pij,pj->pi", maps[i], x)   # (P, 3)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8).reshape(source.shape)
