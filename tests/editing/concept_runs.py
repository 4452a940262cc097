"""Running a concept editor's plan (sega, ledits) through the loop on tiny-random, recording every
step's latents and the UNet's batch sizes, for their tests (test_sega.py, test_ledits.py)."""

from tests.editing.blending_runs import STEPS
from videdit.attention import attention_processors
from videdit.config import make_config
from videdit.core import StepCallback, denoise, make_schedule
from videdit.editing import EditContext, get_editor


class Record(StepCallback):
    def __init__(self):
        self.latents = []

    def on_step_end(self, ctx, x):
        self.latents.append(x.clone())
        return x


def run_plan(tiny, s, inv, editor, params, adjust=None, steps=STEPS):
    """The plan of ``editor`` run by the loop (DDIM inversion: no replay) -> (every step's
    latents, UNet evaluations per frame summed over the calls); ``adjust(plan)`` may change
    the plan first."""
    sched = make_schedule(tiny.scheduler_config, steps)
    src, tgt, neg = tiny.encode_text([s.source_prompt, s.target_prompt, s.negative_prompt]).chunk(3)
    ctx = EditContext(model=tiny, inversion=inv, schedule=sched, source_cond=src, target_cond=tgt, uncond=neg,
                      guidance=s.guidance, source_prompt=s.source_prompt, target_prompt=s.target_prompt)
    spec = get_editor(editor)
    plan = spec.plan(ctx, make_config(spec.config, params, editor))
    if adjust is not None:
        adjust(plan)
    rec = Record()
    calls = []
    hook = tiny.unet.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        with attention_processors(tiny.unet, plan.processors):
            denoise(tiny.unet, plan.x, sched, plan.branches, callbacks=[*plan.callbacks, rec], info=plan.info)
    finally:
        hook.remove()
    return rec.latents, sum(calls)
