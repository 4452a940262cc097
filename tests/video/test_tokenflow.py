"""TokenFlow propagation: nearest tokens by cosine similarity, the blend of the two nearest
keyframes' outputs on a hand-made case, and the source branch it needs."""

import pytest
import torch

from videdit.attention import AttnCall
from videdit.core import CallInfo
from videdit.editing import EDITORS
from videdit.errors import VideditError
from videdit.pipeline import EditSettings, edit_latents, invert_frames
from videdit.video.tokenflow import TokenFlowPropagation, nearest_tokens

from tests.video.clips import SOURCE, TARGET


def test_nearest_tokens_use_cosine_similarity():
    gen = torch.Generator().manual_seed(0)
    keys = torch.eye(6)[torch.randperm(6, generator=gen)] * torch.rand(6, 1, generator=gen).add(0.5)
    perm = torch.randperm(6, generator=gen)
    feats = keys[perm] * 7.0 + 0.01 * torch.rand(6, 6, generator=gen)   # scaled, slightly perturbed rows
    assert torch.equal(nearest_tokens(feats, keys), perm)


def test_tokenflow_propagation_on_a_hand_made_case():
    """Window of 5 frames, keyframes 0 and 4, one head, T = 4 tokens, two branches (0 = source).
    Frame 1's source tokens are keyframe 0's in order p, frame 3's keyframe 4's in order r;
    each must take 3/4 of its nearer keyframe's outputs at those tokens and 1/4 of the other's
    at the matching tokens, in the edit branch only."""
    layer, T = "up_blocks.2.attentions.0.transformer_blocks.0.attn1.processor", 4
    tf = TokenFlowPropagation([layer], [0, 4], [0, 4], range(0, 5), source=0, persistent={})
    info = CallInfo(n_branches=2, guided=False, latent_size=(2, 2))
    call = AttnCall(layer=layer, cross=False, info=info, heads=1, tokens=T)
    eye = torch.eye(T)
    kf_feats = torch.stack([eye, eye[[2, 0, 3, 1]]])               # (2 keyframes, T, d): tokens e_s, e_q(s)
    kf_out = torch.randn(2, 2, T, 3)                                # (nb, keyframes, T, C)

    def run(frames, feats, out):
        info.frames, info.batch = frames, 0 if frames == (0, 4) else 1
        k = torch.stack([feats, feats]).flatten(0, 1)[:, None]      # (nb * fb, 1 head, T, d)
        tf.qkv(call, None, k, k)
        return tf.output(call, out.flatten(0, 1)).view_as(out)

    kept = run((0, 4), kf_feats, kf_out)
    assert torch.equal(kept, kf_out)                                # keyframes are left alone
    p, r = torch.tensor([3, 1, 0, 2]), torch.tensor([1, 2, 0, 3])
    feats = torch.stack([eye[p], eye[[2, 0, 3, 1]][r]])             # frames 1 and 3
    mine = torch.randn(2, 2, T, 3)
    got = run((1, 3), feats, mine)
    q = torch.tensor([2, 0, 3, 1])                                  # keyframe 4's token s is e_q(s)
    qinv = torch.argsort(q)
    torch.testing.assert_close(got[1, 0], 0.75 * kf_out[1, 0, p] + 0.25 * kf_out[1, 1, qinv[p]])
    torch.testing.assert_close(got[1, 1], 0.25 * kf_out[1, 0, q[r]] + 0.75 * kf_out[1, 1, r])
    assert torch.equal(got[0], mine[0])                             # the source branch keeps its own


def test_tokenflow_needs_a_source_branch(tiny, clip):
    """Declared: the settings refuse an editor without one, naming those with one."""
    assert EDITORS.having("has_source_branch") == ["cross_image", "masactrl", "pix2pix_zero", "plug_and_play",
                                                   "prompt_to_prompt"]
    with pytest.raises(VideditError, match="reads the editor's source branch, and editor 'plain' runs none; use one "
                                           "of .*prompt_to_prompt"):
        EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2,
                     temporal={"keyframes": {}, "tokenflow": {"scope": "window", "features": "keys"}})
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=2, editor="prompt_to_prompt",
                     temporal={"keyframes": {"every": 1}, "tokenflow": {"scope": "window", "features": "keys"}})
    z = edit_latents(tiny, invert_frames(tiny, clip[:2], s), s)
    assert z.shape == (2, 4, 8, 8) and torch.isfinite(z).all()
