"""Settings, reconstruction errors and one inversion step's map shared by the approximate
inversions' tests (null-text, NPI/ProxEdit, fixed point, AIDI, pix2pix-zero). Numbers measured on
tiny-random with the two wolf frames (64x64)."""

from videdit.core.loop import CallInfo
from videdit.core.schedule import make_schedule
from videdit.inversion import InversionInputs
from videdit.inversion.fixed_point import inverse_step_map
from videdit.pipeline import EditSettings, invert_frames, reconstruct


def rel_error(a, b):
    return float((a - b).norm() / b.norm())


def settings(inversion="ddim", *, scale=7.5, steps=10, target="a wolf", **params):
    """Edit settings at guidance ``scale``; ``params`` are the inversion's options."""
    return EditSettings(source_prompt="a wolf", target_prompt=target, steps=steps, guidance=scale,
                        inversion=inversion, inversion_params=params)


def recon_error(model, frames, s):
    inv = invert_frames(model, frames, s)
    return rel_error(reconstruct(model, inv, s), inv.source), inv


def step_map(tiny, wolf_frames, steps, step):
    """g of one inversion step, from the clean latents: z (1, F, C, h, w) -> z."""
    cond, uncond = tiny.encode_text(["a wolf", ""]).chunk(2)
    z = tiny.encode_images(wolf_frames)
    inp = InversionInputs(unet=tiny.unet, prediction_type=tiny.prediction_type, latents=z,
                          schedule=make_schedule(tiny.scheduler_config, steps), cond=cond, uncond=uncond)
    return inverse_step_map(inp, step, z[None], 1.0, CallInfo()), z[None]
