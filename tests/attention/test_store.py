"""CrossAttentionStore: the conditional half's cross-attention maps, averaged per frame."""

import torch

from videdit.attention import attention_processors, compose
from videdit.core.loop import CallInfo


def test_cross_attention_store_maps(tiny):
    from videdit.attention import CrossAttentionStore
    from videdit.core import Branches, denoise, make_schedule

    store = CrossAttentionStore(tokens=[1, 2], n_frames=3)
    info = CallInfo()
    text = tiny.encode_text(["ab", ""])
    x = torch.randn(1, 3, 4, 8, 12)  # non-square latents
    with attention_processors(tiny.unet, compose(tiny.unet, [store], info)):
        denoise(tiny.unet, x, make_schedule(tiny.scheduler_config, 2), Branches(text[:1], text[1:], (5.0,)),
                batch_size=2, info=info)
    maps = store.maps()
    assert maps.shape == (1, 3, 2, 8, 12)
    assert (maps >= 0).all() and (maps <= 1).all()
    assert store.count.tolist() == [14.0] * 3  # 2 steps x 7 cross-attention layers (8x12, 4x6, 2x3 grids)
