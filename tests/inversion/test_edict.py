"""EDICT (videdit/inversion/edict.py): low precision and the fp32 fallback, and a callback's
change keeping its coupled latents consistent."""

import dataclasses

import torch

from tests.inversion.exact_runs import PROMPT, ZeroCorner, rel_error, replay_context, settings_for
from videdit.core.loop import Branches, denoise
from videdit.inversion import INVERSIONS
from videdit.models import load_model, unet_dtype
from videdit.pipeline import invert_frames, reconstruct


def test_edict_fp32_inversion_fallback(wolf_frames):
    """bf16 tiny-random, 10 steps, guidance 7.5. With the latent algebra in float64 the bf16
    UNet sees the very same inputs in both directions, so a bf16 inversion replayed in bf16 is
    exact (measured 0.0; 1.4e-2 when the algebra was fp32), as is fp32 both ways. An fp32
    inversion replayed by a bf16 UNet is not (0.45): the fallback pays only when the edit's
    UNet runs in fp32 too."""
    model = load_model("tiny-random", dtype="bf16")
    s = settings_for("edict")
    inv_bf16 = invert_frames(model, wolf_frames, s)
    inv_fp32 = invert_frames(model, wolf_frames, dataclasses.replace(s, inversion_dtype="fp32"))
    assert model.unet.dtype == torch.bfloat16  # restored after the fp32 inversion
    err_bf16 = rel_error(reconstruct(model, inv_bf16, s), inv_bf16.source)
    err_mixed = rel_error(reconstruct(model, inv_fp32, s), inv_fp32.source)
    with unet_dtype(model.unet, torch.float32):
        err_fp32 = rel_error(reconstruct(model, inv_fp32, s), inv_fp32.source)
    assert err_fp32 <= 1e-4 and err_bf16 <= 1e-4, (err_fp32, err_bf16)
    assert err_mixed > 0.1, err_mixed


def test_edict_callback_change_moves_both_latents(tiny, wolf_frames):
    s = settings_for("edict")
    inv = invert_frames(tiny, wolf_frames, s)
    ctx = replay_context(tiny, n_branches=2, source_branch=0, output_branch=1)
    sampler = INVERSIONS["edict"].replay(inv, ctx, INVERSIONS["edict"].config()).sampler
    state = sampler.start(inv.noise[None].expand(2, -1, -1, -1, -1))  # (x, y), each (2, F, C, h, w)
    torch.testing.assert_close(state[1][1], inv.extras["coupled"][0])
    x = ZeroCorner().on_step_end(None, sampler.latents(state))
    new = sampler.with_latents(state, x)
    assert torch.count_nonzero(new[0][..., :4, :4]) == 0
    torch.testing.assert_close(new[1] - new[0], state[1] - state[0])  # delta added to y as well
    # through the loop: the corner stays zero and the pair stays finite
    cond, uncond = tiny.encode_text([PROMPT, ""]).chunk(2)
    out = denoise(tiny.unet, inv.noise[None], ctx.schedule, Branches(cond=cond, uncond=uncond, guidance=(7.5,)),
                  sampler=sampler, callbacks=[ZeroCorner()])
    assert torch.count_nonzero(out[..., :4, :4]) == 0 and torch.isfinite(out).all()
