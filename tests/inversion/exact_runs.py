"""Settings, replay contexts and a step callback shared by the exact inversions' tests (EDICT,
BDIA, direct, DDPM)."""

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
