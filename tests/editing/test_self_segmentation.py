"""Self-segmentation from attention (videdit/editing/self_segmentation.py against
garibida/cross-image-attention utils/segmentation.py Segmentor) on a made-up attention map."""

import torch

from videdit.editing.self_segmentation import kmeans, object_mask, word_map


def _attention(groups: torch.Tensor, noise: float = 1e-3) -> torch.Tensor:
    """Self-attention (T, T) where each pixel attends evenly to its own group's pixels, plus noise."""
    same = (groups.flatten()[:, None] == groups.flatten()[None]).float()
    p = same / same.sum(1, keepdim=True) + noise * torch.rand(same.shape, generator=torch.Generator().manual_seed(0))
    return p / p.sum(1, keepdim=True)


def test_kmeans_recovers_separated_clusters_deterministically():
    """Five well-separated groups come back as five clusters; the same seed gives the same labels."""
    centres = torch.eye(5) * 10
    points = centres.repeat_interleave(8, 0) + 0.1 * torch.randn(40, 5, generator=torch.Generator().manual_seed(1))
    labels = kmeans(points, 5)
    truth = torch.arange(5).repeat_interleave(8)
    for c in range(5):
        assert labels[truth == c].unique().numel() == 1
    assert labels.unique().numel() == 5 and torch.equal(labels, kmeans(points, 5))


def test_the_object_is_the_clusters_its_word_attends_to():
    """Segmentor.cluster2noun and create_mask: 5 clusters of the self-attention rows; the word's map
    (half the grid, nearest-upsampled, (m - |min m|) / max m) scores each; a cluster whose score
    exceeds 1.4 x the mean of the others but the best is the object's."""
    groups = torch.zeros(8, 8, dtype=torch.long)
    groups[:, 4:] = 1
    groups[4:, :4], groups[4:, 4:] = 2, 3
    groups[2:6, 2:6] = 4                                          # the object, in the middle
    cross = torch.full((4, 4), 0.1)
    cross[1:3, 1:3] = 0.9                                         # the word, on the object's cells
    word = word_map(cross.flatten(), (4, 4), (8, 8))
    assert word.shape == (8, 8)
    torch.testing.assert_close(word[2:6, 2:6], torch.full((4, 4), (0.9 - 0.1) / 0.9), rtol=0, atol=1e-6)
    torch.testing.assert_close(word[0], torch.zeros(8), rtol=0, atol=1e-6)
    mask = object_mask(_attention(groups), word)
    assert torch.equal(mask, (groups == 4).float())
    cross[0, 2:], cross[1, 3] = 0.9, 0.9                          # and on group 1's cells: both are the object's
    mask = object_mask(_attention(groups), word_map(cross.flatten(), (4, 4), (8, 8)))
    assert torch.equal(mask, ((groups == 4) | (groups == 1)).float())
    even = torch.full((16,), 0.5)                                 # no cluster stands out: no object
    assert object_mask(_attention(groups), word_map(even, (4, 4), (8, 8))).sum() == 0
