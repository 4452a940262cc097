"""Classifier-free guidance: uncond + scale * (cond - uncond)."""

import torch

from videdit.core import cfg


def test_cfg():
    u, c = torch.zeros(2), torch.ones(2)
    assert cfg(u, c, 7.5).tolist() == [7.5, 7.5]
    assert cfg(u, c, 1.0).tolist() == [1.0, 1.0]


def test_cfg_on_tensors_follows_the_formula():
    u = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    c = torch.tensor([[2.0, 0.0], [0.5, -1.0]], dtype=torch.float64)
    assert cfg(u, c, 3.0).tolist() == [[4.0, 4.0], [0.5, -9.0]]        # u + 3 (c - u)
    assert torch.equal(cfg(u, c, 0.0), u)
    torch.testing.assert_close(cfg(u, c, 1.0), c, rtol=0, atol=1e-15)
    assert cfg(u, c, -1.0).tolist() == [[0.0, -4.0], [0.5, 7.0]]       # negative guidance pushes away from cond
    assert cfg(u[:1], c, 2.0).shape == (2, 2)                           # uncond broadcasts over a batch
