"""Settings, replay contexts and a step callback shared by the exact inversions' tests (EDICT,
BDIA, direct, DDPM), and the official EDICT / BDIA code's scheduler arithmetic."""

import torch
from diffusers import DDIMScheduler

from videdit.core.loop import StepCallback
from videdit.core.schedule import make_schedule
from videdit.inversion import ReplayContext
from videdit.pipeline import EditSettings

PROMPT = "a wolf"
# Options that make an exact inversion give the source back where its reference's defaults do not:
# ddpm's reference zeroes the last noise map and takes the maps' means at guidance 3.5, not the edit's.
EXACT_OPTIONS = {"ddpm": {"guidance": None, "zero_last": False}}


def rel_error(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def replay_context(tiny, **kw):
    fields = dict(schedule=make_schedule(tiny.scheduler_config, 10), n_branches=1, source_branch=None,
                  output_branch=0, source_cond=tiny.encode_text([PROMPT]), uncond=tiny.encode_text([""]),
                  prediction_type="epsilon", guidance=7.5)
    return ReplayContext(**{**fields, **kw})


def settings_for(method, guidance=7.5, steps=10, **kw):
    params = {**EXACT_OPTIONS.get(method, {}), "guidance": guidance, **kw.pop("inversion_params", {})}
    return EditSettings(source_prompt=PROMPT, target_prompt=PROMPT, steps=steps, guidance=guidance, inversion=method,
                        inversion_params=params, **kw)


class ZeroCorner(StepCallback):
    def on_step_end(self, ctx, x):
        x = x.clone()
        x[..., :4, :4] = 0
        return x


# -- the official EDICT / BDIA code's scheduler arithmetic, for the tests that transcribe their loops --

def reference_scheduler(tiny, steps):
    """The DDIM scheduler salesforce/EDICT and guoqiang-zhang-x/BDIA build (scaled-linear betas,
    no clipping, set_alpha_to_one=False, the default steps_offset 0), on tiny-random's config."""
    sched = DDIMScheduler.from_config({**tiny.scheduler_config, "steps_offset": 0, "set_alpha_to_one": False})
    sched.set_timesteps(steps)
    return sched


def alpha_at(sched, t) -> float:
    """edict_functions.py get_alpha_and_beta: alpha-bar at timestep t, the final one below 0
    (t is a whole number in these tests, so its interpolation is the table's value)."""
    t = float(t)
    return float(sched.final_alpha_cumprod) if t < 0 else float(sched.alphas_cumprod[int(round(t))])


def official_step(sched, eps, t, sample, reverse: bool):
    """edict_functions.py forward_step (DDIM from t down to t - T/N) and reverse_step (its inverse)."""
    down = sched.config.num_train_timesteps / len(sched.timesteps)
    a_t, a_prev = alpha_at(sched, t), alpha_at(sched, float(t) - down)
    q = (a_t / a_prev) ** 0.5
    if reverse:
        return q * sample + (1 - a_t) ** 0.5 * eps - q * (1 - a_prev) ** 0.5 * eps
    return sample / q - (1 - a_t) ** 0.5 * eps / q + (1 - a_prev) ** 0.5 * eps


def official_eps(unet, x, t, cond, uncond, guidance):
    """The official loops' guided noise: two UNet calls (uncond, then cond), float64 latents."""
    t = torch.as_tensor(t)[None]
    u = unet(x.float(), t, encoder_hidden_states=uncond).sample.double()
    c = unet(x.float(), t, encoder_hidden_states=cond).sample.double()
    return u + guidance * (c - u)
