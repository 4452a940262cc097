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
otherwise). The extra cost is the recorded pass: N more UNet evaluations per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from videdit.core.ddim import ddim_step
from videdit.core.loop import CallInfo, StepCallback, StepContext, predict_noise
from videdit.errors import VideditError
from videdit.inversion._exact import float64
from videdit.inversion._guidance import warn_if_guidance_differs
from videdit.inversion.ddim import DDIMInversionConfig, ddim_inversion
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, Replay, ReplayContext, register_inversion


@dataclass(frozen=True)
class DirectInversionConfig:
    inversion_guidance: float = 1.0  # CFG of the DDIM inversion (the paper: 1, conditional only)
    guidance: float | None = None  # None: the edit's guidance (exact replay needs the same)
    add_target: bool = False         # also offset the output branch when the editor has a source branch

    def __post_init__(self):
        if not isinstance(self.add_target, bool):
            raise VideditError(f"direct add_target must be true or false, got {self.add_target!r}")
        for name in ("inversion_guidance", "guidance"):
            if getattr(self, name) is not None and not 0 <= getattr(self, name) <= 50:
                raise VideditError(f"direct {name} must be in [0, 50], got {getattr(self, name)}")


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
    warn_if_guidance_differs("direct", config.guidance, ctx)
    if ctx.source_branch is None:
        branches = (ctx.output_branch,)
    elif config.add_target and ctx.output_branch != ctx.source_branch:
        branches = (ctx.source_branch, ctx.output_branch)
    else:
        branches = (ctx.source_branch,)
    return Replay(callbacks=(AddOffsets(inv.extras["offsets"], branches),))


@register_inversion("direct", DirectInversionConfig, replay=direct_replay,
                    reference="Ju et al. 2024, PnP Inversion / Direct Inversion (ICLR); cure-lab/PnPInversion")
@torch.no_grad()
def direct_inversion(inp: InversionInputs, config: DirectInversionConfig) -> Inversion:
    """Direct inversion / PnP Inversion (Ju et al. 2024, Alg. 1): DDIM + recorded per-step offsets."""
    ddim = ddim_inversion(inp, DDIMInversionConfig(guidance=config.inversion_guidance))
    s, traj = inp.schedule, ddim.trajectory
    info = CallInfo(inverting=True)
    # float64: DDIM_g(z*_i) + offsets[i] then lands on z*_{i+1} to the last bit (the two are
    # often much larger than z* at high guidance, and an fp32 sum would lose its low bits).
    offsets = []
    for i in tqdm(range(len(s)), desc="record offsets", disable=not inp.progress, leave=False):
        info.step = i
        x = traj[i][None]  # (1, F, C, h, w)
        out = predict_noise(inp.unet, x, int(s.timesteps[i]), inp.cond, inp.uncond, (config.guidance,),
                            batch_size=inp.batch_size, info=info)
        step = ddim_step(x, out, float(s.alphas[i]), float(s.alphas_prev[i]), inp.prediction_type)[0]
        offsets.append(float64(traj[i + 1]) - float64(step))
    evals = ddim.unet_evals + len(s) * (2 if config.guidance != 1 else 1)
    return Inversion(method="direct", trajectory=traj, extras={"offsets": torch.stack(offsets)},  # (N, F, C, h, w)
                     unet_evals=evals, frame_axes={"offsets": 1})
