"""Prompts, edit settings and plan runners shared by the attention editors' tests (Prompt-to-Prompt,
Plug-and-Play, MasaCtrl, cross-image attention) on one real frame and tiny-random."""

import dataclasses

import torch

from videdit.attention import AttentionModule, attention_processors, compose, module_hooks
from videdit.core import make_schedule
from videdit.core.loop import CallInfo
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


def sd_shaped(tiny):
    """tiny-random with a UNet of Stable Diffusion 1.x's block layout (three cross-attention
    down blocks and up blocks of 2 and 3 transformer blocks, one mid block: 16 in all, named
    as in SD) and small random weights, so that the reference codes' layer choices (by index
    path, or by the order the UNet runs its attention) can be checked on SD's names."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
                                    block_out_channels=(32, 32, 64, 64), norm_num_groups=8, cross_attention_dim=32,
                                    attention_head_dim=8,
                                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3).eval()
    return dataclasses.replace(tiny, name="sd-shaped", unet=unet, fingerprint="sd-shaped-random")


def run_order(unet, latent=(8, 8)) -> list[str]:
    """The self-attention processors in the order one forward pass runs them."""
    from videdit.attention import attention_processors

    order = []

    class Record(AttentionModule):
        cross = False

        def qkv(self, call, q, k, v):
            order.append(call.layer)
            return q, k, v

    with torch.no_grad(), attention_processors(unet, compose(unet, [Record()], CallInfo())):
        unet(torch.zeros(1, 4, *latent), 1, encoder_hidden_states=torch.zeros(1, 77, unet.config.cross_attention_dim))
    return order


def preset_settings(name: str, target: str, **overrides):
    """The EditSettings the CLI makes from ``configs/NAME`` and ``-t target`` (``overrides``
    replace fields afterwards, e.g. fewer steps)."""
    from pathlib import Path

    from videdit.cli import _with_config, build_parser, editor_params
    from videdit.pipeline import EditSettings

    config = Path(__file__).resolve().parents[2] / "configs" / name
    a = _with_config(build_parser(), ["edit", "x.mp4", "-t", target, "-o", "o.mp4", "--config", str(config)])
    s = EditSettings(source_prompt=a.source, target_prompt=a.target, negative_prompt=a.negative,
                     steps=a.steps, guidance=a.guidance, steps_offset=a.steps_offset, strength=a.strength,
                     inversion=a.inversion, inversion_params=dict(a.inversion_param), editor=a.editor,
                     editor_params=editor_params(a), source_branch=a.source_branch)
    return dataclasses.replace(s, **overrides) if overrides else s


def sdxl_shaped_unet():
    """A UNet of Stable Diffusion XL's block layout (no attention in the first down block and the
    last up block, cross-attention down and up blocks of 1-2 and 3 transformer blocks where SDXL
    has 2 and 10, a mid block), small random weights: SDXL's layer names at a tiny size."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 32, 64),
            norm_num_groups=8, cross_attention_dim=64, attention_head_dim=(2, 4, 4), use_linear_projection=True,
            transformer_layers_per_block=(1, 2, 3), addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=80,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")).eval()
