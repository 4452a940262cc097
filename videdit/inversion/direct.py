"""Direct inversion (Ju et al. 2024, "PnP Inversion: boosting diffusion-based editing with
3 lines of code", ICLR; Alg. 1).

DDIM inversion (``inversion_guidance``, 1 by default, as in the paper) gives the source
trajectory z*_i. A reconstruction pass at the editing guidance (``guidance``) then records,
for every step, the gap between the inversion branch and one guided DDIM step from it:

    offsets[i] = z*_{i+1} - DDIM_g(z*_i)                         (Alg. 1, the added difference)

While editing, a step callback adds ``offsets[i]`` to the source branch after step i, which
puts that branch back on the inversion trajectory (the paper adds the difference rather
than overwriting, which is the same when the source branch's step is not itself edited);
the target branch is left alone and only sees the corrected source through the editor
(shared attention). So with a two-branch editor an identity edit (target = source prompt)
is *not* the reconstruction: its target branch is plain guided DDIM from the inverted
noise. ``add_target=True`` (the authors' code's "add target" variant, an ablation in the
paper) adds the offsets to the output branch as well, which makes every identity edit
exact. Editors without a source branch (the plain editor) get the offset on their output
branch in any case, a choice of this implementation: then the plain identity edit is the
exact reconstruction, and a plain edit is corrected as if its single branch were the source.

Exact when the edit samples at ``guidance`` (7.5 like the default edit; the replay warns
otherwise). The extra cost is the recorded pass: N more UNet evaluations per frame (guided: 2N
rows), as in the authors' code (``DirectInversion.offset_calculate``).

``offsets="in_edit"`` (videdit's, for editors with a source branch) records nothing: the edit's
own source branch starts each step on z*_i, so z*_{i+1} minus that branch after its step is the
offset of the step the edit takes. Without ``add_target`` that is pinning the source branch to
the trajectory (``PinnedBranch``: no offset to add at all), and an editor that reads only the
source's conditional half (``cond_only_source``: prompt-to-prompt, plug-and-play) then runs the
source without its unconditional half. With ``add_target`` the offset goes to the output branch
too. At 50 steps and guidance 7.5 prompt-to-prompt costs 50 + 150 UNet rows per frame instead of
150 + 200 (``python tools/bench.py count``). An editor that pins its source branch itself
(plug-and-play, ``--source-branch pinned``) gets ``in_edit`` whatever is asked: the recorded
offsets would only move that branch, which pinning puts on z*_{i+1} anyway. Not bit-identical to the recorded offsets: there the
source branch lands within float rounding of z*_{i+1} (the recorded pass and the edit run its
rows in other batches), here on it; and exact at any edit guidance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from videdit.core.ddim import ddim_step
from videdit.core.loop import CallInfo, PinnedBranch, StepCallback, StepContext, predict_noise
from videdit.errors import VideditError
from videdit.inversion._exact import float64
from videdit.inversion._guidance import warn_if_guidance_differs
from videdit.inversion.ddim import DDIMInversionConfig, ddim_inversion
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, Replay, ReplayContext, register_inversion
from videdit.progress import progress_bar
from videdit.registry import improved


@dataclass(frozen=True)
class DirectInversionConfig:
    inversion_guidance: float = 1.0  # CFG of the DDIM inversion (the paper: 1, conditional only)
    guidance: float | None = None  # None: the edit's guidance (exact replay needs the same)
    add_target: bool = False         # also offset the output branch when the editor has a source branch
    # "recorded": a pass of their own after the inversion (Alg. 1, the authors' code); "in_edit": taken from the
    # edit's source branch (module docstring)
    offsets: str = improved("recorded", better="in_edit", why="editors with a source branch: the same edit within "
                            "float rounding (the source branch on the inversion to the last bit) without the "
                            "recorded pass and, for prompt-to-prompt and plug-and-play, without the source's "
                            "unconditional half: 50 + 150 UNet rows per frame instead of 150 + 200 at 50 steps "
                            "(python tools/bench.py count)")

    def __post_init__(self):
        if not isinstance(self.add_target, bool):
            raise VideditError(f"direct add_target must be true or false, got {self.add_target!r}")
        if self.offsets not in ("recorded", "in_edit"):
            raise VideditError(f"direct offsets must be 'recorded' (a pass of their own, the paper's) or 'in_edit' "
                               f"(from the edit's source branch), got {self.offsets!r}")
        for name in ("inversion_guidance", "guidance"):
            if getattr(self, name) is not None and not 0 <= getattr(self, name) <= 50:
                raise VideditError(f"direct {name} must be in [0, 50], got {getattr(self, name)}")


class OffsetsFromSource(StepCallback):
    """Direct inversion's offsets taken in the edit: after step i the source branch (on z*_i
    when the step began) goes to z*_{i+1} and every other branch in ``branches`` moves by as
    much as the source did, z*_{i+1} minus the source after its step."""

    def __init__(self, trajectory: torch.Tensor, source: int, branches: tuple[int, ...]):
        self.trajectory, self.source, self.branches = trajectory, source, branches

    def on_step_end(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        goal = float64(self.trajectory[ctx.step + 1].to(x.device))
        offset = goal - float64(x[self.source])
        for b in self.branches:
            x[b] = (float64(x[b]) + offset).to(x.dtype)
        x[self.source] = goal.to(x.dtype)
        return x


class AddOffsets(StepCallback):
    """Adds ``offsets[step]`` (N, F, C, h, w) to the given branches after each step."""

    def __init__(self, offsets: torch.Tensor, branches: tuple[int, ...]):
        self.offsets, self.branches = offsets, branches

    def on_step_end(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        b = list(self.branches)
        wide = float64(x[b])
        x[b] = (wide + self.offsets[ctx.step].to(wide.device)).to(x.device, x.dtype)
        return x


def direct_replay(inv: Inversion, ctx: ReplayContext, config: DirectInversionConfig) -> Replay:
    """DDIM sampling, the source branch (else the output branch) pulled back onto the inversion path."""
    if config.offsets == "in_edit":
        if ctx.source_branch is None:   # refused earlier (needs_source_branch); an editor plan that lies
            raise VideditError("direct offsets='in_edit' takes the offsets from the editor's source branch, and "
                               "this editor runs none; use offsets='recorded'")
        if config.add_target and ctx.output_branch != ctx.source_branch:
            return Replay(callbacks=(OffsetsFromSource(inv.trajectory, ctx.source_branch, (ctx.output_branch,)),),
                          reads_source=True)
        return Replay(callbacks=(PinnedBranch(ctx.source_branch, inv.trajectory),), pins_source=True)
    if "offsets" not in inv.extras:
        raise VideditError("this direct inversion took its offsets in the edit (offsets='in_edit') and the edit "
                           "asks for recorded ones; invert again with the edit's settings")
    warn_if_guidance_differs("direct", config.guidance, ctx)
    if ctx.source_branch is None:
        branches = (ctx.output_branch,)
    elif config.add_target and ctx.output_branch != ctx.source_branch:
        branches = (ctx.source_branch, ctx.output_branch)
    else:
        branches = (ctx.source_branch,)
    return Replay(callbacks=(AddOffsets(inv.extras["offsets"], branches),))


@register_inversion("direct", DirectInversionConfig, replay=direct_replay,
                    needs_source_branch=lambda config: config.offsets == "in_edit",
                    pinned_config=lambda config: dataclasses.replace(config, offsets="in_edit"),
                    reference="Ju et al. 2024, PnP Inversion / Direct Inversion (ICLR); cure-lab/PnPInversion")
@torch.no_grad()
def direct_inversion(inp: InversionInputs, config: DirectInversionConfig) -> Inversion:
    """Direct inversion / PnP Inversion (Ju et al. 2024, Alg. 1): DDIM + recorded per-step offsets."""
    ddim = ddim_inversion(inp, DDIMInversionConfig(guidance=config.inversion_guidance))
    s, traj = inp.schedule, ddim.trajectory
    if config.offsets == "in_edit":   # the edit takes them from its source branch
        return dataclasses.replace(ddim, method="direct")
    info = CallInfo(inverting=True)
    # float64: DDIM_g(z*_i) + offsets[i] then lands on z*_{i+1} to the last bit (the two are
    # often much larger than z* at high guidance, and an fp32 sum would lose its low bits).
    start = inp.start_step   # the steps above it go unread (strength < 1): their offsets stay 0
    offsets = [float64(torch.zeros_like(traj[0]))] * start
    for i in progress_bar(range(start, len(s)), desc="record offsets", disable=not inp.progress, leave=False):
        info.step = i
        x = traj[i][None]  # (1, F, C, h, w)
        out = predict_noise(inp.unet, x, int(s.timesteps[i]), inp.cond, inp.uncond, (config.guidance,),
                            batch_size=inp.batch_size, info=info)
        step = ddim_step(x, out, float(s.alphas[i]), float(s.alphas_prev[i]), inp.prediction_type)[0]
        offsets.append(float64(traj[i + 1]) - float64(step))
    evals = ddim.unet_evals + (len(s) - start) * (2 if config.guidance != 1 else 1)
    return Inversion(method="direct", trajectory=traj, extras={"offsets": torch.stack(offsets)},  # (N, F, C, h, w)
                     unet_evals=evals, frame_axes={"offsets": 1}, start_step=start)
