"""Self-segmentation from attention (Patashnik et al. 2023, "Localizing Object-level Shape
Variations with Text-to-Image Diffusion Models", ICCV, Sec. 4), as cross-image attention's
official code uses it for its masked AdaIN (garibida/cross-image-attention,
``utils/segmentation.py``, ``Segmentor``).

The rows of a self-attention map (T x T, averaged over heads) are clustered with k-means into
``segments`` (5) groups of pixels that attend alike. A word's cross-attention map, nearest-
upsampled to the self-attention's grid and normalised as ``(m - |min m|) / max m``, scores
each cluster by its mean inside it; a cluster belongs to the object when its score exceeds
``threshold`` (1.4) times the mean score of the other clusters but the best one. The mask is
the union of the object's clusters.

Differences from the official code: k-means is videdit's own (k-means++ seeding, ``n_init``
10 restarts, seeded; the official calls scikit-learn's ``KMeans(n_clusters=5, n_init=10)``
after ``np.random.seed(1)``), and the object is one given word, where the official lets it
compete with the prompt's other nouns (found by nltk's part-of-speech tagger, absent here);
with the official prompt "A photo of a <domain>" the domain is its only noun, and the two agree.
"""

from __future__ import annotations

import torch

SEGMENTS = 5       # the official Segmentor's num_segments
THRESHOLD = 1.4    # a cluster is the object's when its score > 1.4 x the others' mean (Segmentor.cluster2noun)


def kmeans(points: torch.Tensor, k: int, *, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4,
           seed: int = 1) -> torch.Tensor:
    """Labels (P,) of Lloyd's k-means on ``points`` (P, D): k-means++ seeding, the best of
    ``n_init`` runs by inertia; a run stops when its centres move less than ``tol`` times the
    points' mean variance (scikit-learn's rule). Seeded by ``seed``, so it is deterministic."""
    x = points.float()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    stop = tol * float(x.var(0, unbiased=False).mean())
    best, best_inertia = None, float("inf")
    for _ in range(n_init):
        centres = _plus_plus(x, k, gen)
        for _ in range(max_iter):
            labels = torch.cdist(x, centres).argmin(1)                                 # (P,)
            moved = centres.clone()
            for c in range(k):
                if (labels == c).any():    # an empty cluster keeps its centre
                    moved[c] = x[labels == c].mean(0)
            shift, centres = float(((moved - centres) ** 2).sum()), moved
            if shift <= stop:
                break
        labels = torch.cdist(x, centres).argmin(1)
        inertia = float(((x - centres[labels]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def _plus_plus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with probability
    proportional to the squared distance to the nearest centre so far. -> (k, D)."""
    first = int(torch.randint(len(x), (1,), generator=gen))
    centres = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)                                                 # (P,)
    for _ in range(1, k):
        weights = d2.cpu().double()
        i = int(torch.multinomial(weights / weights.sum(), 1, generator=gen)) if weights.sum() > 0 \
            else int(torch.randint(len(x), (1,), generator=gen))
        centres.append(x[i])
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return torch.stack(centres)


def word_map(cross: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """A word's cross-attention ``cross`` (T',) on a ``grid`` (h', w') -> (h, w) = ``size``:
    nearest-upsampled by the factor between them (the official ``repeat(2)``) and normalised as
    the official does, ``(m - |min m|) / max m``."""
    m = cross.float().reshape(grid)
    m = m.repeat_interleave(-(-size[0] // grid[0]), 0).repeat_interleave(-(-size[1] // grid[1]), 1)
    m = m[:size[0], :size[1]]
    return (m - m.min().abs()) / m.max()


def object_mask(self_attention: torch.Tensor, word: torch.Tensor, *, segments: int = SEGMENTS,
                threshold: float = THRESHOLD, seed: int = 1) -> torch.Tensor:
    """The object's mask (h, w), 1 inside: k-means of ``self_attention``'s rows (T, T), T = h w,
    into ``segments`` clusters, those whose mean of ``word`` (h, w, from :func:`word_map`)
    exceeds ``threshold`` times the mean of the other clusters' but the best one's."""
    labels = kmeans(self_attention, segments, seed=seed).view(word.shape).to(word.device)   # (h, w)
    scores = torch.stack([word[labels == c].mean() if (labels == c).any() else word.new_zeros(())
                          for c in range(segments)])                                  # (segments,)
    rest = scores.sort(descending=True).values[1:]
    chosen = scores > threshold * rest.mean()
    return chosen[labels].to(word.dtype)
