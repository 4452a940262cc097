"""Guided patch-based synthesis (Ebsynth: Jamriska et al. 2019, "Stylizing Video by Example"),
in PyTorch, after jamriska/ebsynth ``src/ebsynth.cpp`` and ``src/ebsynth_cpu.cpp``.

The output is made of the style image's patches: a nearest-neighbour field (NNF) maps every
target pixel to a source pixel so that the target's guides and current style around it match
the source's around its match, and each output pixel is the mean of the style pixels that the
patches overlapping it vote for. The patch error is Ebsynth's ``PatchSSD_Split``: the sum over
the ``patch_size`` x ``patch_size`` patch of the squared differences of the style channels
(weight ``1 / 3`` each: the default style weight 1 over three channels) and of the guides'
(each guide's weight over its three channels), in 0..255 units; patches at the target's
border are read with clamped coordinates. Coarse to fine over an image pyramid (as many levels
as keep the smaller image at least ``2 patch_size + 1`` pixels wide, halving; Ebsynth's
``resampleCPU`` for the levels): a random NNF at the coarsest level, the NNF upscaled
(``nnfUpscale``) to the next; at each level, after a first vote, ``search_vote_iters`` times
PatchMatch (``patchmatch_iters`` sweeps of propagation from the four neighbours and a random
search at radii halving from the source's size down to 1) and a vote (``krnlVotePlain``). The
search minimises error + ``uniformity`` x occupancy (``tryPatch``: how often the candidate's
source pixels are already used, relative to uniform use). Ebsynth sweeps the pixels in scan
order, a candidate accepted at once; here every pixel takes its candidates in parallel (a
Jacobi sweep) and the occupancy is counted again before each sweep's propagation and before its
random search, which is what makes it vectorised; the objective, candidates and defaults are
Ebsynth's.

The per-pixel error (:func:`synthesize`'s second output) is the final NNF's patch error, the
map Rerender-A-Video's Ebsynth build writes beside each frame (``video_blend.py``
``load_error``) for its error-based selection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from videdit.errors import VideditError

NAME = "ebsynth"


@dataclass(frozen=True)
class EbsynthConfig:
    """Defaults: Ebsynth's command line (``ebsynth.cpp`` ``main``) with the iterations
    Rerender-A-Video's ``video_blend.py`` passes (``-searchvoteiters 12 -patchmatchiters 6``)
    and its guide weights (``weights = [6, 0.5, 0.5, 2]``: colour, edge, temporal, positional)."""

    patch_size: int = 5                       # odd, >= 3
    search_vote_iters: int = 12               # Ebsynth's default 6; video_blend.py passes 12
    patchmatch_iters: int = 6                 # Ebsynth's default 4; video_blend.py passes 6
    uniformity: float = 3500.0                # weight of the occupancy term
    levels: int | None = None                 # pyramid levels (None: as many as fit)
    colour_weight: float = 6.0                # the source frames
    edge_weight: float = 0.5                  # their Laplacian edges (blender/guide.py EdgeGuide)
    temporal_weight: float = 0.5              # the previous synthesis warped along the flow
    positional_weight: float = 2.0            # a coordinate ramp warped along the flow
    seed: int = 0                             # the random NNF and search
    inpaint_radius: int = 30                  # the carried guides' occluded pixels (blender/guide.py: cv2.inpaint)

    def __post_init__(self):
        if not isinstance(self.patch_size, int) or self.patch_size < 3 or self.patch_size % 2 == 0:
            raise VideditError(f"{NAME} patch_size must be an odd whole number >= 3, got {self.patch_size!r}")
        for name in ("search_vote_iters", "patchmatch_iters"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise VideditError(f"{NAME} {name} must be a whole number >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.inpaint_radius, int) or self.inpaint_radius < 1:
            raise VideditError(f"{NAME} inpaint_radius must be a whole number of pixels >= 1, "
                               f"got {self.inpaint_radius!r}")
        if self.levels is not None and (not isinstance(self.levels, int) or self.levels < 1):
            raise VideditError(f"{NAME} levels must be a whole number >= 1 or null (as many as fit), "
                               f"got {self.levels!r}")
        for name in ("uniformity", "colour_weight", "edge_weight", "temporal_weight", "positional_weight"):
            if getattr(self, name) < 0:
                raise VideditError(f"{NAME} {name} must be >= 0, got {getattr(self, name)}")

    @property
    def guide_weights(self) -> tuple[float, float, float, float]:
        return self.colour_weight, self.edge_weight, self.temporal_weight, self.positional_weight


# ---- Rerender-A-Video's guides (blender/guide.py) ----

def edges(frame: np.ndarray) -> np.ndarray:
    """``EdgeGuide``: the 3x3 Laplacian of a uint8 frame, per channel, saturated to 0..255
    (``cv2.filter2D(img, -1, [[0, -1, 0], [-1, 4, -1], [0, -1, 0]])``)."""
    import cv2

    kernel = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], np.float32)
    return cv2.filter2D(frame, -1, kernel)


def positional_ramp(height: int, width: int) -> np.ndarray:
    """``PositionalGuide``'s first image, (H, W, 3) uint8 in RGB: red grows down the rows, green
    along the columns, blue 0 (the official BGR ``(0, g, r)``)."""
    i, j = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    return np.stack([(i * 255).astype(np.uint8), (j * 255).astype(np.uint8), np.zeros((height, width), np.uint8)], -1)


# ---- the synthesis ----

def pyramid_levels(source: tuple[int, int], target: tuple[int, int], patch_size: int) -> int:
    """How many levels fit (``ebsynth.cpp``: the smaller side of the smaller image halved
    ``level`` times stays >= 2 patch_size + 1)."""
    side = min(*source, *target)
    for level in range(32, -1, -1):
        if int(side * 2.0 ** -level) >= 2 * patch_size + 1:
            return level + 1
    return 0


def resample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) -> (C, h, w): Ebsynth's ``resampleCPU``, bilinear at ``(s x, s y)`` with
    ``s = W / w`` for both axes, coordinates clamped."""
    c, hh, ww = x.shape
    s = ww / size[1]
    ys = (torch.arange(size[0], dtype=x.dtype, device=x.device) * s).clamp(max=hh - 1)
    xs = (torch.arange(size[1], dtype=x.dtype, device=x.device) * s).clamp(max=ww - 1)
    gy, gx = torch.meshgrid(2 * ys / max(hh - 1, 1) - 1, 2 * xs / max(ww - 1, 1) - 1, indexing="ij")
    grid = torch.stack([gx, gy], -1)[None]                                      # (1, h, w, 2)
    return F.grid_sample(x[None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0]


def _patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """(C, H, W) -> (C p p, H W): every pixel's patch, coordinates clamped at the border."""
    r = p // 2
    return F.unfold(F.pad(x[None], (r, r, r, r), mode="replicate"), p)[0]


class _Source:
    """One pyramid level of the exemplar: its style and guide patches (scaled by the square
    roots of their weights), pixel-major so that a match's patch is one contiguous row."""

    def __init__(self, style: torch.Tensor, guides: torch.Tensor, style_w: torch.Tensor, guide_w: torch.Tensor,
                 p: int):
        self.size = tuple(style.shape[1:])
        self.style_patches = _patches(style, p).T.contiguous()                         # (Ns, 3 p p) for the vote
        self.patches = _patches(torch.cat([style * style_w, guides * guide_w]), p).T.contiguous()   # (Ns, D)


class _Level:
    """One pyramid level of a synthesis: the exemplar's patches and the target's (guides, and
    the current style); the patch error of any NNF and the vote."""

    def __init__(self, source: _Source, tgt_guides: torch.Tensor, style_w: torch.Tensor, guide_w: torch.Tensor,
                 p: int):
        self.p, self.source, self.style_w = p, source, style_w
        self.src_size, self.tgt_size = source.size, tuple(tgt_guides.shape[1:])
        self.src = source.patches                                                       # (Ns, D)
        guides = _patches(tgt_guides * guide_w, p).T                                    # (Nt, Dg)
        self.n_style = self.src.shape[1] - guides.shape[1]                              # 3 p p
        self.tgt = guides.new_empty(guides.shape[0], self.src.shape[1])                 # (Nt, D)
        self.tgt[:, self.n_style:] = guides

    def set_style(self, target_style: torch.Tensor) -> None:
        self.tgt[:, :self.n_style] = _patches(target_style * self.style_w, self.p).T

    def error(self, nnf: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        """Patch errors (Nt,) of the NNF (Nt, 2) (row, column of each target pixel's source match)."""
        index = nnf[:, 0] * self.src_size[1] + nnf[:, 1]
        out = torch.empty(len(index), dtype=self.src.dtype, device=self.src.device)
        for i in range(0, len(index), chunk):
            d = self.src.index_select(0, index[i:i + chunk]).sub_(self.tgt[i:i + chunk])   # (n, D)
            out[i:i + chunk] = d.square_().sum(1)
        return out

    def vote(self, nnf: torch.Tensor) -> torch.Tensor:
        """``krnlVotePlain``: each target pixel the mean of the style pixels that the patches
        covering it put on it (the matches' patches laid at their target pixels, those parts
        inside the target summed: ``fold``). -> (3, H, W)."""
        (h, w), p = self.tgt_size, self.p
        index = nnf[:, 0] * self.src_size[1] + nnf[:, 1]
        laid = self.source.style_patches.index_select(0, index).T[None]                # (1, 3 p p, Nt)
        total = F.fold(laid, (h, w), p, padding=p // 2)[0]                             # (3, H, W)
        count = F.fold(laid.new_ones(1, p * p, h * w), (h, w), p, padding=p // 2)[0]   # (1, H, W)
        return total / count


def _occupancy(nnf: torch.Tensor, src_size: tuple[int, int], p: int, n_target: int) -> torch.Tensor:
    """(Hs, Ws): at each source pixel, the uses of the patch centred there (the sum of Ebsynth's
    Omega over it) over p^2, relative to uniform use (``omegaBest``)."""
    hs, ws = src_size
    centres = torch.zeros(hs * ws, dtype=torch.float32, device=nnf.device)
    centres.index_add_(0, nnf[:, 0] * ws + nnf[:, 1], torch.ones(len(nnf), device=nnf.device))
    omega = F.conv2d(F.pad(centres.view(1, 1, hs, ws), (p // 2,) * 4), torch.ones(1, 1, p, p, device=nnf.device))
    patch_omega = F.conv2d(F.pad(omega, (p // 2,) * 4), torch.ones(1, 1, p, p, device=nnf.device))[0, 0]
    best = n_target / (hs * ws) * p * p
    return patch_omega / (p * p) / best


def _patchmatch(level: _Level, nnf: torch.Tensor, iters: int, uniformity: float,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Ebsynth's ``patchmatch``, each sweep in parallel over the pixels: -> NNF (Nt, 2), error (Nt,)."""
    (h, w), (hs, ws), r = level.tgt_size, level.src_size, level.p // 2
    lo, hi = nnf.new_tensor([r, r]), nnf.new_tensor([hs - r - 1, ws - r - 1])
    err = level.error(nnf)
    radii = [max(hs, ws)]
    while radii[-1] != 1:
        radii.append(int(0.5 ** len(radii) * radii[0]))

    def occ(field):
        return _occupancy(field, (hs, ws), level.p, h * w) if uniformity > 0 else None

    def take(cand, valid, omega):
        nonlocal nnf, err
        new = level.error(cand)
        cost_new, cost_cur = new, err
        if omega is not None:
            cost_new = new + uniformity * omega[cand[:, 0], cand[:, 1]]
            cost_cur = err + uniformity * omega[nnf[:, 0], nnf[:, 1]]
        better = valid & (cost_new < cost_cur)
        nnf = torch.where(better[:, None], cand, nnf)
        err = torch.where(better, new, err)

    for _ in range(iters):
        omega = occ(nnf)
        for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):      # from the neighbour at (y - dy, x - dx)
            field = nnf.view(h, w, 2)
            cand = torch.roll(field, shifts=(dy, dx), dims=(0, 1)) + field.new_tensor([dy, dx])
            valid = torch.ones(h, w, dtype=torch.bool, device=nnf.device)
            if dy:
                valid[0 if dy > 0 else -1] = False
            if dx:
                valid[:, 0 if dx > 0 else -1] = False
            cand = cand.view(-1, 2)
            valid = valid.flatten() & (cand >= lo).all(1) & (cand <= hi).all(1)
            take(cand.clamp(min=lo, max=hi), valid, omega)
        omega = occ(nnf)
        for radius in radii:                                    # random search, largest radius first
            tl = (nnf - radius).clamp(min=lo)
            br = (nnf + radius).clamp(max=hi + 1)
            span = (br - tl).clamp(min=1)
            u = torch.rand(nnf.shape, generator=gen, device=gen.device).to(nnf.device)
            cand = tl + (u * span).long().clamp(max=span - 1)
            take(cand, torch.ones(len(nnf), dtype=torch.bool, device=nnf.device), omega)
    return nnf, err


class Exemplar:
    """Ebsynth's source side: the ``style`` image (Hs, Ws, 3) uint8 and its ``guides`` (each
    (Hs, Ws, 3) uint8) weighted by ``weights``, its pyramid levels made once, for the many
    targets synthesised from one keyframe (:meth:`synthesize`)."""

    def __init__(self, style: np.ndarray, guides: list[np.ndarray], weights: tuple[float, ...],
                 config: EbsynthConfig = EbsynthConfig(), device: str | torch.device = "cpu"):
        if len(guides) != len(weights) or not weights:
            raise VideditError(f"{NAME} needs one guide per guide weight, got {len(guides)} and {len(weights)}")
        self.config, self.device, self.n_guides = config, device, len(guides)
        self.style, self.guides = _stack([style], device), _stack(guides, device)      # (3, Hs, Ws), (G, Hs, Ws)
        self.style_w = self.style.new_full((self.style.shape[0],), 1.0 / self.style.shape[0]).sqrt()[:, None, None]
        self.guide_w = torch.cat([self.style.new_full((x.shape[-1],), wt / x.shape[-1])
                                  for x, wt in zip(guides, weights)]).sqrt()[:, None, None]
        self._levels: dict[tuple[int, int], _Source] = {}

    def level(self, size: tuple[int, int]) -> _Source:
        if size not in self._levels:
            full = size == tuple(self.style.shape[1:])
            style = self.style if full else resample(self.style, size)
            guides = self.guides if full else resample(self.guides, size)
            self._levels[size] = _Source(style, guides, self.style_w, self.guide_w, self.config.patch_size)
        return self._levels[size]

    def synthesize(self, target_guides: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The style transferred onto the target that ``target_guides`` describe (paired with the
        exemplar's guides). -> the synthesis (H, W, 3) uint8 and its per-pixel patch error (H, W)
        float32 (module doc)."""
        if len(target_guides) != self.n_guides:
            raise VideditError(f"{NAME} needs one target image per guide, got {len(target_guides)} for "
                               f"{self.n_guides}")
        config, device, p = self.config, self.device, self.config.patch_size
        t_guides = _stack(target_guides, device)
        src_size, tgt_size = tuple(self.style.shape[1:]), tuple(t_guides.shape[1:])
        most = pyramid_levels(src_size, tgt_size, p)
        if most < 1:
            raise VideditError(f"{NAME}: images of {src_size} and {tgt_size} pixels are too small for "
                               f"patch_size {p} (at least {2 * p + 1} pixels a side)")
        n_levels = min(config.levels or most, most)
        gen = torch.Generator(device="cpu").manual_seed(config.seed)
        nnf = err = prev_size = None
        r = p // 2
        for level_i in range(n_levels):
            scale = 2.0 ** -(n_levels - 1 - level_i)
            ss = (int(src_size[0] * scale), int(src_size[1] * scale))
            ts = (int(tgt_size[0] * scale), int(tgt_size[1] * scale))
            level = _Level(self.level(ss), t_guides if ts == tgt_size else resample(t_guides, ts),
                           self.style_w, self.guide_w, p)
            if nnf is None:        # nnfInitRandom
                u = torch.rand(ts[0] * ts[1], 2, generator=gen).to(device)
                nnf = (r + u * torch.tensor([ss[0] - 2 * r, ss[1] - 2 * r], device=device)).long()
            else:                  # nnfUpscale: the parent's match doubled plus the child's parity, clamped
                ys, xs = torch.meshgrid(torch.arange(ts[0], device=device), torch.arange(ts[1], device=device),
                                        indexing="ij")
                ph, pw = prev_size
                parent = nnf.view(ph, pw, 2)[(ys // 2).clamp(max=ph - 1), (xs // 2).clamp(max=pw - 1)]
                nnf = (parent * 2 + torch.stack([ys % 2, xs % 2], -1)).view(-1, 2)
                nnf = torch.stack([nnf[:, 0].clamp(p, ss[0] - p - 1), nnf[:, 1].clamp(p, ss[1] - p - 1)], 1)
            prev_size = ts
            level.set_style(level.vote(nnf))
            err = level.error(nnf)
            for _ in range(config.search_vote_iters):
                nnf, err = _patchmatch(level, nnf, config.patchmatch_iters, config.uniformity, gen)
                level.set_style(level.vote(nnf))
        out = level.vote(nnf)
        image = out.permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).cpu().numpy()
        return image, err.view(tgt_size).cpu().numpy().astype(np.float32)


def _stack(images: list[np.ndarray], device) -> torch.Tensor:
    """uint8 (H, W, c) images -> (sum c, H, W) float32 on ``device``."""
    return torch.cat([torch.from_numpy(np.ascontiguousarray(x)).to(device).permute(2, 0, 1).float() for x in images])


def synthesize(style: np.ndarray, source_guides: list[np.ndarray], target_guides: list[np.ndarray],
               weights: tuple[float, ...], config: EbsynthConfig = EbsynthConfig(),
               device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Ebsynth once: ``style`` (Hs, Ws, 3) uint8 with ``source_guides`` onto the target that
    ``target_guides`` describe, guide i weighted by ``weights[i]`` (:class:`Exemplar`)."""
    return Exemplar(style, source_guides, weights, config, device).synthesize(target_guides)
