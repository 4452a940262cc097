"""Plug-and-Play: inject the source's decoder features and self-attention (Tumanyan et al. 2023).

"Plug-and-Play Diffusion Features for Text-Driven Image-to-Image Translation", CVPR 2023,
Sec. 4 (Eqs. 3-5). Defaults follow the official code, github.com/MichalGeyer/pnp-diffusers
(``pnp.py``, ``pnp_utils.py``, ``config_pnp.yaml``). The source (branch 0) runs beside the
target (branch 1), and by default it is pinned to the inversion (``pinned_source``,
``EditSettings.source_branch``): at step i its latents are the stored inversion latent
x*_t = ``trajectory[i]``, as ``pnp.py``'s ``denoise_step`` loads ``noisy_latents_{t}.pt``.
Its text is the empty prompt and its guidance 1 (``pnp_guidance_embeds = get_text_embeds("",
"")``, one pass without CFG), so the features handed over are those of x*_t under "", and
each guidance half of the target receives the source's *conditional* half (the official
batch is [source, uncond, cond] and both target halves copy the source row). The source's
unconditional half is computed and left unread: no more UNet work than the two-branch loop
does anyway, and no drift, since nothing is sampled on that branch. The source prompt
(``-s``) is the inversion's prompt (``preprocess.py --inversion_prompt``, '' by default);
``source_prompt`` gives the source branch that prompt instead of "", as TokenFlow's
``run_tokenflow_pnp.py`` does (``pnp_guidance_embeds`` of its ``inversion_prompt.txt``).

For the first ``feature_fraction`` of the steps (tau_f, ``pnp_f_t: 0.8``: the timesteps
``timesteps[:int(50 * 0.8)]``) the target's spatial features f^4_t of the decoder, the
residual branch of ``up_blocks.1.resnets.1`` (its ``conv2`` output, before the skip
connection is added, where ``register_conv_control_efficient`` overwrites ``hidden_states``),
are the source's; for the first ``attention_fraction`` (tau_A, ``pnp_attn_t: 0.5``) the
self-attention maps of the decoder layers are the source's, done as
``register_attention_control_efficient`` does by handing the target the source's queries and
keys (Eq. 5: A = softmax(q_src k_src^T / sqrt(d)), values the target's).

Layers are globs over module names (features) and processor names (attention); the defaults
are the official ones for SD 1.x/2.x: ``up_blocks.1.resnets.1`` and the decoder
self-attention of ``up_blocks.1.attentions.1-2`` and ``up_blocks.2-3`` (``res_dict = {1: [1,
2], 2: [0, 1, 2], 3: [0, 1, 2]}``), named by depth (``up@0``: the first decoder level with
attention, ``up@1+``: those after it, :func:`~videdit.attention.layers.expand_levels`) so that
on SDXL they are ``up_blocks.0.resnets.1``, ``up_blocks.0.attentions.1-2`` and ``up_blocks.1``:
the same depths, at 1/4 and 1/2 of the latent grid as on SD 1.x. The official sampling runs 50
DDIM steps at guidance 7.5 after a DDIM inversion under "" through 999 steps (``preprocess.py``;
``-I every_timestep=true`` of the ``ddim`` inversion, which ``configs/pnp.yaml`` sets) with the
negative prompt of ``config_pnp.yaml``. ``--source-branch replay`` instead samples the source branch from the
inverted noise under "" at guidance 1, which drifts from the inversion as DDIM does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videdit.attention import choose_layers, compose, expand_levels, match_modules, patterns
from videdit.core.loop import CallInfo
from videdit.editing.control import SOURCE, TARGET, InjectQKV, check_fraction, step_window, two_branches
from videdit.editing.registry import EditContext, EditPlan, register_editor
from videdit.errors import VideditError

EDITOR = "plug_and_play"


@dataclass(frozen=True)
class PlugAndPlayConfig:
    feature_fraction: float = 0.8      # tau_f (pnp_f_t): decoder features injected for this fraction of the steps
    attention_fraction: float = 0.5    # tau_A (pnp_attn_t): decoder self-attention injected for this fraction
    # globs over module names: SD 1.x's up_blocks.1.resnets.1.conv2
    feature_layers: tuple[str, ...] = ("up@0.resnets.1.conv2",)
    # globs over processor names: SD 1.x's up_blocks.1.attentions.1-2 and up_blocks.2-3
    attention_layers: tuple[str, ...] = ("up@0.attentions.[12].*attn1.processor", "up@1+.*attn1.processor")
    # the source branch's text: "" (pnp.py's pnp_guidance_embeds), or the source prompt -s (TokenFlow's
    # run_tokenflow_pnp.py reads its inversion prompt for them)
    source_prompt: bool = False

    def __post_init__(self):
        check_fraction(EDITOR, "feature_fraction", self.feature_fraction)
        check_fraction(EDITOR, "attention_fraction", self.attention_fraction)
        object.__setattr__(self, "feature_layers", patterns(EDITOR, "feature_layers", self.feature_layers))
        object.__setattr__(self, "attention_layers", patterns(EDITOR, "attention_layers", self.attention_layers))


class InjectFeatures:
    """A forward hook: within ``steps``, the target branch's output of the hooked module
    becomes the source branch's conditional half's, in both guidance halves (Eq. 4)."""

    def __init__(self, info: CallInfo, steps: range):
        self.info, self.steps = info, steps

    def __call__(self, module, args, output: torch.Tensor):
        info = self.info
        if info.inverting or info.step not in self.steps:
            return None
        out = info.to_full(output).unflatten(0, (info.halves, info.n_branches, len(info.frames))).clone()
        out[:, TARGET] = out[-1:, SOURCE]                                   # (halves, nb, fb, C, h, w)
        return info.to_run(out.flatten(0, 2))


@register_editor(EDITOR, PlugAndPlayConfig, source_branch=True, pinned_source=True, cond_only_source=True,
                 reference="Tumanyan et al., CVPR 2023; github.com/MichalGeyer/pnp-diffusers (pnp.py, pnp_utils.py, "
                           "preprocess.py, config_pnp.yaml)")
def plug_and_play(ctx: EditContext, config: PlugAndPlayConfig) -> EditPlan:
    """Plug-and-Play (Tumanyan et al. 2023): source decoder features and self-attention injected into the target."""
    unet, n = ctx.model.unet, len(ctx.schedule)
    source = ctx.source_cond if config.source_prompt else ctx.model.encode_text([""])   # (1, L, D)
    x, branches = two_branches(ctx, source_cond=source, source_guidance=1.0)
    info = CallInfo()
    modules = []
    attention_steps = step_window(0, config.attention_fraction, n)
    if len(attention_steps):
        layers = choose_layers(unet, config.attention_layers, EDITOR, "attention_layers", cross=False)
        modules.append(InjectQKV(layers, attention_steps, TARGET, q_from=SOURCE, k_from=SOURCE, from_cond=True))
    hooks = {}
    feature_steps = step_window(0, config.feature_fraction, n)
    if len(feature_steps):
        for pattern in expand_levels(unet, config.feature_layers):
            if not match_modules(unet, pattern):
                raise VideditError(f"{EDITOR} feature_layers {pattern!r} matches no module of this model; modules "
                                   f"are named like 'up_blocks.1.resnets.1.conv2' (unet.named_modules())")
            hooks[pattern] = InjectFeatures(info, feature_steps)
    return EditPlan(x=x, branches=branches, processors=compose(unet, modules, info), hooks=hooks, info=info,
                    output_branch=TARGET, source_branch=SOURCE)
