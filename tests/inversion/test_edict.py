"""EDICT (videdit/inversion/edict.py): the official code's defaults and loops (leapfrog steps,
strength), low precision and the fp32 fallback, and a callback's change keeping its coupled
latents consistent."""

import dataclasses

import pytest
import torch

from tests.inversion.exact_runs import (PROMPT, ZeroCorner, official_eps, official_step, reference_scheduler,
                                        rel_error, replay_context, settings_for)
from videdit.core.loop import Branches, denoise
from videdit.inversion import INVERSIONS
from videdit.inversion.edict import EDICTConfig
from videdit.models import load_model, unet_dtype
from videdit.pipeline import EditSettings, edit_latents, invert_frames, reconstruct


def test_edict_fp32_inversion_fallback(wolf_frames):
    """bf16 tiny-random, 10 steps, guidance 7.5. With the latent algebra in float64 the bf16
    UNet sees the very same inputs in both directions, so a bf16 inversion replayed in bf16 is
    exact (measured 0.0; 1.4e-2 when the algebra was fp32), as is fp32 both ways. An fp32
    inversion replayed by a bf16 UNet is not (0.096 at the reference's strength 0.8 and
    steps_offset 0; 0.45 over the whole schedule): the fallback pays only when the edit's UNet
    runs in fp32 too."""
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
    assert err_mixed > 0.05, err_mixed


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


def official_edict(unet, z0, source, target, uncond, sched, strength, p, guidance, leapfrog):
    """salesforce/EDICT edict_functions.py, EDICT_editing: coupled_stablediffusion(reverse=True)
    from the image latent, then coupled_stablediffusion from the pair under the edit prompt;
    the loops transcribed with their index rule for which latent moves (``leapfrog_steps``).
    -> the latent pair after inverting and the first latent after editing."""
    steps = len(sched.timesteps)
    t_limit = steps - int(steps * strength)
    pair = [z0.double(), z0.double()]
    timesteps = sched.timesteps[t_limit:].flip(0)
    for i, t in enumerate(timesteps):
        pair[1] = (pair[1] - (1 - p) * pair[0]) / p          # reverse mixing layer
        pair[0] = (pair[0] - (1 - p) * pair[1]) / p
        for latent_i in range(2):
            if leapfrog:
                orig_i = len(timesteps) - (i + 1)
                latent_i = (latent_i + (orig_i + 1) % 2) % 2
            else:
                latent_i = (latent_i + 1) % 2
            eps = official_eps(unet, pair[(latent_i + 1) % 2], t, source, uncond, guidance)
            pair[latent_i] = official_step(sched, eps, t, pair[latent_i], reverse=True)
    inverted = [z.clone() for z in pair]
    for i, t in enumerate(sched.timesteps[t_limit:]):
        for latent_i in range(2):
            if leapfrog:
                latent_i = (latent_i + i % 2) % 2
            eps = official_eps(unet, pair[(latent_i + 1) % 2], t, target, uncond, guidance)
            pair[latent_i] = official_step(sched, eps, t, pair[latent_i], reverse=False)
        pair[0] = p * pair[0] + (1 - p) * pair[1]              # mixing layer
        pair[1] = (1 - p) * pair[0] + p * pair[1]
    return inverted, pair[0]


class CountCalls:
    """Counts a module's forward calls inside the ``with`` block."""

    def __init__(self, module):
        self.module, self.calls = module, 0

    def __enter__(self):
        self.handle = self.module.register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_edict_defaults_are_the_official_editing_call():
    """salesforce/EDICT edict_functions.py EDICT_editing: steps=50, init_image_strength=0.8,
    guidance_scale=3 (inverting and editing), mix_weight=0.93; coupled_stablediffusion:
    leapfrog_steps=True."""
    s = EditSettings(inversion="edict")
    assert (s.steps, s.guidance, s.strength, s.start_step) == (50, 3.0, 0.8, 10)
    assert s.inversion_config == EDICTConfig(p=0.93, guidance=3.0, leapfrog=True)
    assert "salesforce/EDICT" in INVERSIONS["edict"].reference


@pytest.mark.parametrize("leapfrog", [True, False])
def test_edict_edit_is_the_official_code(tiny, wolf_frames, leapfrog):
    """One frame, 10 steps, the official defaults otherwise (strength 0.8: steps 2..9; guidance 3;
    p 0.93; steps_offset 0): videdit's inversion and edit against the official loops
    (:func:`official_edict`, edict_functions.py coupled_stablediffusion) with the same UNet.
    Measured: the inverted pair and the edit agree to 3e-6 relative (videdit combines the guidance
    in fp32, the official code in float64); the other order (leapfrog or not) is 5e-2 off in the
    inverted pair and 1.7e-2 in the edit. The inversion runs only the 8 steps it edits: 8 x 2
    latents UNet calls (each guided pair in one call)."""
    frames = wolf_frames[:1]
    s = EditSettings(source_prompt=PROMPT, target_prompt="a fox", steps=10, steps_offset=0, inversion="edict",
                     inversion_params={"leapfrog": leapfrog})
    with CountCalls(tiny.unet) as inverting:
        inv = invert_frames(tiny, frames, s)
    z = edit_latents(tiny, inv, s)
    assert inverting.calls == 16 and inv.start_step == 2 and inv.unet_evals == 32
    source, target, uncond = tiny.encode_text([PROMPT, "a fox", ""])[:, None]
    inverted, edited = official_edict(tiny.unet, inv.source, source, target, uncond, reference_scheduler(tiny, 10),
                                      0.8, 0.93, 3.0, leapfrog)
    x, y = inv.noise.double() + inv.extras["residual"].double(), inv.extras["coupled"][2]
    assert rel_error(x, inverted[0]) < 1e-5 and rel_error(y, inverted[1]) < 1e-5
    assert rel_error(z, edited) < 1e-5, rel_error(z, edited)
