"""Prompts, edit settings and plan runners shared by the attention editors' tests (Prompt-to-Prompt,
Plug-and-Play, MasaCtrl, cross-image attention) on one real frame and tiny-random."""

import dataclasses

from videdit.attention import AttentionModule, attention_processors, compose, module_hooks
from videdit.core import make_schedule
from videdit.pipeline import edit_context

SOURCE, TARGET = "a wolf in a forest", "a robot wolf in a forest"
SAME_LENGTH = "a bear in a forest"   # as many (character) tokens as SOURCE on tiny-random
STEPS = 5


def rel(a, b):
    return float((a - b).norm() / b.norm())


def settings(s, editor, target=TARGET, **params):
    return dataclasses.replace(s, editor=editor, target_prompt=target, editor_params=params)


def plan_of(tiny, inv, s):
    """The editor's plan, built as edit_latents builds it."""
    return s.editor_spec.plan(edit_context(tiny, inv, s), s.editor_config)


class Probe(AttentionModule):
    """Records (step, layer, q, k, v) as the modules before it left them."""

    def __init__(self, layers, cross=None):
        self.layers_set, self.cross, self.seen = set(layers), cross, []

    def applies(self, layer, cross):
        return layer in self.layers_set

    def qkv(self, call, q, k, v):
        self.seen.append((call.info.step, call.layer, *(call.split(t).clone() for t in (q, k, v))))
        return q, k, v


def with_probe(tiny, plan, layer, probe=None):
    """The plan with ``probe`` composed after its modules on ``layer``."""
    probe = probe or Probe([layer])
    procs = dict(plan.processors)
    procs.update(compose(tiny.unet, [*plan.processors[layer].modules, probe], plan.info))
    return dataclasses.replace(plan, processors=procs), probe


def run_plan(tiny, inv, s, plan, probes=None):
    """Denoise the plan as edit_latents does; ``probes``: forward hooks run after the plan's."""
    from videdit.core import denoise

    schedule = make_schedule(tiny.scheduler_config, s.steps)
    with attention_processors(tiny.unet, plan.processors), module_hooks(tiny.unet, plan.hooks), \
            module_hooks(tiny.unet, probes):
        return denoise(tiny.unet, plan.x, schedule, plan.branches, callbacks=plan.callbacks, info=plan.info)
