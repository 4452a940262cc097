"""Edit masks (videdit/editing/masks.py): from files, tensors, attention maps and noise differences."""

import cv2
import numpy as np
import pytest
import torch

from tests.editing.blending_runs import FRAMES, LATENT, SOURCE, STEPS, TARGET, left_half
from videdit.core import make_schedule
from videdit.editing.masks import (load_mask, mask_from_attention, mask_from_file, mask_from_noise_difference,
                                   mask_from_tensor, upsample_mask)
from videdit.errors import VideditError


@pytest.fixture(scope="module")
def inverted(blending_inverted):
    return blending_inverted


def test_mask_file_of_another_aspect_ratio_is_an_error(tmp_path):
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), np.full((40, 80), 255, np.uint8))
    ratios = r"80x40 \(aspect ratio 2\.000\).*64x64 \(aspect ratio 1\.000\).*crop or pad"
    with pytest.raises(VideditError, match=ratios):
        mask_from_file(path, LATENT, frame_size=FRAMES)


def test_mask_file_of_the_same_ratio_is_resized(tmp_path):
    image = np.zeros((200, 200), np.uint8)
    image[:, 100:] = 255                                       # right half white = edit
    cv2.imwrite(str(tmp_path / "m.png"), image)
    np.save(tmp_path / "m.npy", np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32))
    m = mask_from_file(tmp_path / "m.png", LATENT, frame_size=FRAMES)
    assert m.shape == (1, 1, 8, 8) and m.dtype == torch.float32
    assert torch.equal(m[..., 4:], torch.ones(1, 1, 8, 4)) and torch.equal(m[..., :4], torch.zeros(1, 1, 8, 4))
    soft = mask_from_file(tmp_path / "m.npy", LATENT, frame_size=FRAMES)
    assert soft.shape == (1, 1, 8, 8) and 0 < float(soft.min()) < 0.1 and 0.9 < float(soft.max()) < 1
    # within 1% of the aspect ratio is accepted and resized
    cv2.imwrite(str(tmp_path / "near.png"), np.full((200, 201), 255, np.uint8))
    assert mask_from_file(tmp_path / "near.png", LATENT, frame_size=FRAMES).shape == (1, 1, 8, 8)
    with pytest.raises(VideditError, match="does not exist"):
        mask_from_file(tmp_path / "missing.png", LATENT, frame_size=FRAMES)


def test_tensor_masks_and_upsampling():
    m = mask_from_tensor(torch.ones(3, 16, 16), LATENT, frame_size=FRAMES, n_frames=3)
    assert m.shape == (3, 1, 8, 8) and torch.equal(m, torch.ones(3, 1, 8, 8))
    with pytest.raises(VideditError, match=r"values in \[0, 1\]"):
        mask_from_tensor(torch.full((8, 8), 2.0), LATENT, frame_size=FRAMES)
    with pytest.raises(VideditError, match="2 frames but 3"):
        mask_from_tensor(torch.ones(2, 8, 8), LATENT, frame_size=FRAMES, n_frames=3)
    with pytest.raises(VideditError, match="aspect ratio"):
        mask_from_tensor(torch.ones(8, 16), LATENT, frame_size=FRAMES)
    assert load_mask(None, LATENT, frame_size=FRAMES) is None
    up = upsample_mask(left_half(), (64, 64))
    assert up.shape == (1, 1, 64, 64) and float(up.min()) == 0 and float(up.max()) == 1
    assert float(up[..., :28].min()) == 1 and float(up[..., 36:].max()) == 0   # soft only at the seam
    down = upsample_mask(up, LATENT)                           # and back: exact away from the seam
    away = [0, 1, 2, 5, 6, 7]
    assert torch.equal(down[..., away], left_half()[..., away])


def test_mask_from_attention_normalises_thresholds_and_dilates():
    maps = torch.zeros(2, 2, 8, 8)                             # (F, k tokens, h, w)
    maps[0, 0, 2, 2], maps[0, 1, 2, 3] = 4.0, 1.0              # frame 0: token maps summed, max 4
    maps[1, 0] = 0.1                                           # frame 1: flat
    soft = mask_from_attention(maps, None)
    assert soft.shape == (2, 1, 8, 8) and float(soft[0, 0, 2, 2]) == 1 and float(soft[0, 0, 2, 3]) == 0.25
    assert torch.equal(soft[1], torch.ones(1, 8, 8))
    hard = mask_from_attention(maps, 0.5)
    assert int(hard[0].sum()) == 1
    assert int(mask_from_attention(maps, 0.5, dilate=1)[0].sum()) == 9
    assert int(mask_from_attention(torch.zeros(1, 1, 8, 8), 0.5).sum()) == 0   # no attention: no mask


def test_diffedit_mask_is_zero_for_identical_prompts_and_not_for_different(tiny, inverted):
    s, inv, _ = inverted("ddim")
    src, tgt, same, neg = tiny.encode_text([SOURCE, TARGET, SOURCE, ""]).chunk(4)
    sched = make_schedule(tiny.scheduler_config, STEPS)
    kw = dict(n_samples=3, seed=0)
    m_same = mask_from_noise_difference(tiny.unet, inv.source, src, same, neg, sched, **kw)
    m_diff = mask_from_noise_difference(tiny.unet, inv.source, src, tgt, neg, sched, **kw)
    assert m_same.shape == m_diff.shape == (2, 1, 8, 8)
    assert float(m_same.abs().max()) == 0
    assert set(m_diff.unique().tolist()) == {0.0, 1.0}
    assert 0.05 < float(m_diff.mean()) < 0.6                  # a region, not everything
    soft = mask_from_noise_difference(tiny.unet, inv.source, src, tgt, neg, sched, threshold=None, **kw)
    assert torch.equal((soft > 0.5).float(), m_diff) and 0 <= float(soft.min()) and float(soft.max()) <= 1
