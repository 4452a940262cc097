"""The one denoising loop. Editors change what it does through step callbacks and
attention processors; they never copy it.

Latents are laid out ``(n_branches, F, C, h, w)``: a *branch* is one prompt denoised over
all frames (an attention editor runs the source and the target branch side by side). The
UNet sees frames in batches; within one call the batch is ordered
``(guidance half, branch, frame)``, which :class:`CallInfo` tells the attention processors.
A branch in ``Branches.cond_only`` (a source branch whose guided output nothing reads) runs
without its unconditional half: the call then holds fewer rows (``CallInfo.rows``), and what
reads the batch as (half, branch, frame) sees it through ``CallInfo.to_full``, where the missing
half is the branch's conditional rows, and writes back through ``CallInfo.to_run``.
Frames go through in order, except that ``CallInfo.lead_frames`` (anchors other frames attend
to, such as video keyframes) go first, together in one batch; ``CallInfo.pivot_frames`` run
before all of them in a batch of their own whose outputs are dropped (TokenFlow's pivotal pass:
it only leaves attention outputs for the other frames to read).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from videdit.core.conditioning import call_unet
from videdit.core.ddim import ddim_step
from videdit.core.guidance import cfg
from videdit.core.schedule import Schedule
from videdit.progress import progress_bar

# Text conditioning: (n_branches, L, D) or per frame (n_branches, F, L, D); or one per step.
Embeds = torch.Tensor | Sequence[torch.Tensor] | Callable[[int], torch.Tensor]


@dataclass
class CallInfo:
    """What the UNet call in flight holds; attention processors read it."""

    step: int = 0
    timestep: int = 0
    n_branches: int = 1
    frames: tuple[int, ...] = ()   # frame indices of this call's batch
    guided: bool = False           # batch holds an unconditional half first
    inverting: bool = False
    latent_size: tuple[int, int] = (0, 0)   # (h, w) of the latents in this call
    batch: int = 0                 # index of this batch within the model call (0: its first)
    lead_frames: tuple[int, ...] = ()  # frames the UNet sees first, together in one batch
    pivot_frames: tuple[int, ...] = ()  # frames run before them in a batch whose outputs are dropped
    pivotal: bool = False          # this call is that batch
    cond_only: tuple[int, ...] = ()  # branches run without their unconditional half (guided calls only)
    _index: tuple | None = field(default=None, repr=False, compare=False)   # _full_index's, for one layout

    @property
    def halves(self) -> int:
        return 2 if self.guided else 1

    @property
    def ragged(self) -> bool:
        """Whether the call leaves out some branch's unconditional half."""
        return self.guided and any(b < self.n_branches for b in self.cond_only)

    def rows(self) -> list[tuple[int, int]]:
        """(guidance half, branch) of the call's rows in batch order, each ``len(frames)`` items."""
        return [(h, b) for h in range(self.halves) for b in range(self.n_branches)
                if not (self.ragged and h == 0 and b in self.cond_only)]

    def _full_index(self) -> tuple[list[int], list[int]]:
        """For every item of the full (halves, nb, fb) layout, the call's batch item holding it (the
        branch's conditional item for a missing unconditional one); and the full index of each
        item the call runs. Kept for the call's layout: every layer of a call asks."""
        fb, rows = len(self.frames), self.rows()
        if self._index is None or self._index[0] != (fb, tuple(rows)):
            at = {row: i * fb for i, row in enumerate(rows)}
            full = [at.get((h, b), at[(self.halves - 1, b)]) + f
                    for h in range(self.halves) for b in range(self.n_branches) for f in range(fb)]
            run = [(h * self.n_branches + b) * fb + f for h, b in rows for f in range(fb)]
            self._index = ((fb, tuple(rows)), full, run)
        return self._index[1], self._index[2]

    def to_full(self, x: torch.Tensor) -> torch.Tensor:
        """The call's batch (B, ...) -> the full (halves * nb * fb, ...) layout (the same tensor
        unless the call is :attr:`ragged`)."""
        return x[self._full_index()[0]] if self.ragged else x

    def to_run(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_full`: the rows the call runs, in its order."""
        return x[self._full_index()[1]] if self.ragged else x


@dataclass
class StepContext:
    """Passed to step callbacks."""

    step: int
    timestep: int | float   # Schedule.timestep: a float between training timesteps (Euler)
    alpha: float
    alpha_prev: float
    n_steps: int
    extras: dict = field(default_factory=dict)


class StepCallback:
    """Per-step hooks; each returns its (possibly changed) tensor. Shapes (nb, F, C, h, w)."""

    def on_step_start(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        """Before the model call of step ``ctx.step``: the latents it will see (pix2pix-zero's
        cross-attention guidance moves them by a gradient step here)."""
        return x

    def on_noise(self, ctx: StepContext, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` is the guided model output (epsilon or v, as the model predicts)."""
        return out

    def on_step_end(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        return x

    def on_guidance(self, ctx: StepContext, frames: tuple[int, ...], uncond: torch.Tensor,
                    cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Before classifier-free guidance combines them: one UNet call's unconditional and
        conditional outputs, each (nb, fb, C, h, w) for frame indices ``frames``. Called on
        guided steps only (some scale != 1), once per frame batch."""
        return uncond, cond


class PinnedBranch(StepCallback):
    """Holds one branch on a stored trajectory (N+1, F, C, h, w): after step i its latents
    are ``trajectory[i + 1]``, so the UNet computes that branch's features (attention maps,
    queries, residual features) on the inverted source latents at every step, as
    plug-and-play's official code does, and the branch cannot drift from the source."""

    def __init__(self, branch: int, trajectory: torch.Tensor):
        self.branch, self.trajectory = branch, trajectory

    def on_step_end(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[self.branch] = self.trajectory[ctx.step + 1].to(x)
        return x


@dataclass(frozen=True)
class Branches:
    """The prompts denoised together and their guidance scales (one per branch). A branch in
    ``cond_only`` runs without its unconditional half and its output is the conditional one
    (guidance 1), so only where its guided output and its unconditional rows go unread (a
    source branch pinned to the inversion, or unguided, under an editor reading only its
    conditional half)."""

    cond: torch.Tensor   # (nb, L, D) or (nb, F, L, D)
    uncond: Embeds       # same shape, or one such tensor per step
    guidance: tuple[float, ...]
    cond_only: tuple[int, ...] = ()

    def uncond_at(self, step: int) -> torch.Tensor:
        if callable(self.uncond):
            return self.uncond(step)
        if isinstance(self.uncond, torch.Tensor):
            return self.uncond
        return self.uncond[step]


def _per_frame(e: torch.Tensor, nb: int, frames: Sequence[int]) -> torch.Tensor:
    """(nb, L, D) or (nb, F, L, D) -> (nb, len(frames), L, D)."""
    if e.ndim == 3:
        return e[:, None].expand(nb, len(frames), *e.shape[1:])
    return e[:, list(frames)]


def frame_batches(n_frames: int, batch_size: int, lead: Sequence[int] = ()) -> list[tuple[int, ...]]:
    """The frame index batches of one model call, in order: ``lead`` first, all in one batch
    (it may hold more than ``batch_size`` frames), then the other frames in order, in batches
    of ``batch_size``."""
    lead = tuple(sorted(set(lead)))
    if lead and not 0 <= lead[0] <= lead[-1] < n_frames:
        raise ValueError(f"lead frames {lead} are not frames of a {n_frames}-frame batch")
    rest = [f for f in range(n_frames) if f not in lead]
    return ([lead] if lead else []) + [tuple(rest[i:i + batch_size]) for i in range(0, len(rest), batch_size)]


# (uncond, cond, frames) -> (uncond, cond): a change to the unguided outputs before CFG.
BeforeCFG = Callable[[torch.Tensor, torch.Tensor, tuple[int, ...]], tuple[torch.Tensor, torch.Tensor]]


def predict_noise(unet, x: torch.Tensor, timestep: int | float, cond: torch.Tensor, uncond: torch.Tensor | None,
                  guidance: Sequence[float], *, batch_size: int = 8, info: CallInfo | None = None,
                  before_cfg: BeforeCFG | None = None, cond_only: Sequence[int] = ()) -> torch.Tensor:
    """Guided model output for latents ``x`` (nb, F, C, h, w) at one timestep (an int, or a float
    between training timesteps: :meth:`Schedule.timestep`), frames in batches of ``batch_size``
    (``info.lead_frames`` first: :func:`frame_batches`; before them ``info.pivot_frames`` in one
    batch, ``info.pivotal``, whose output is dropped).
    ``uncond`` is skipped when every guidance scale is 1, and for the branches in ``cond_only``
    (their output is the conditional one: :class:`Branches`);
    ``before_cfg`` may change each batch's unguided outputs before they are combined (a
    ``cond_only`` branch's unconditional output there is its conditional one)."""
    nb, n_frames = x.shape[:2]
    guided = uncond is not None and any(g != 1 for g in guidance)
    info = info if info is not None else CallInfo()
    info.timestep, info.n_branches, info.guided = int(timestep), nb, guided
    info.cond_only = tuple(sorted({b % nb for b in cond_only})) if guided else ()
    halved = [b for b in range(nb) if b not in info.cond_only]   # branches that run an unconditional half
    if guided and info.cond_only:
        guidance = [1.0 if b in info.cond_only else g for b, g in enumerate(guidance)]
    info.latent_size = tuple(x.shape[-2:])
    dtype = unet.dtype
    out = torch.empty_like(x, dtype=torch.float32)
    scale = torch.tensor(guidance, dtype=torch.float32, device=x.device).view(nb, 1, 1, 1, 1)
    batches = frame_batches(n_frames, batch_size, info.lead_frames)
    pivots = [tuple(info.pivot_frames)] if info.pivot_frames else []
    for i, frames in enumerate(pivots + batches):
        info.frames, info.batch, info.pivotal = frames, i, i < len(pivots)
        index = list(frames)
        xb = x[:, index]                                          # (nb, fb, C, h, w)
        text = _per_frame(cond, nb, frames)                       # (nb, fb, L, D)
        if guided:
            xb = torch.cat([xb[halved], xb])                      # (len(halved) + nb, fb, C, h, w)
            text = torch.cat([_per_frame(uncond, nb, frames)[halved], text])
        t = torch.full((xb.shape[0] * xb.shape[1],), timestep, device=x.device,
                       dtype=torch.long if isinstance(timestep, int) else torch.float32)
        y = call_unet(unet, xb.flatten(0, 1).to(dtype), t, text.flatten(0, 1).to(dtype), info)
        if info.pivotal:
            continue                                              # only its attention outputs are read
        y = y.float().unflatten(0, xb.shape[:2])                  # (rows, fb, C, h, w)
        if guided:
            u, c = y[:len(halved)], y[len(halved):]               # (len(halved), fb, ...), (nb, fb, ...)
            if len(halved) < nb:
                u = c.clone()
                u[halved] = y[:len(halved)]                       # a cond_only branch: its conditional rows
            if before_cfg is not None:
                u, c = before_cfg(u, c, frames)
            y = cfg(u, c, scale)
        out[:, index] = y
    info.pivotal = False
    return out


class Sampler:
    """How one step moves the latents; the inversion picks the sampler that replays it
    (DDIM here; EDICT, BDIA and DDPM keep more state). ``predict(x)`` is the guided model
    output for latents ``x`` (nb, F, C, h, w) at the current step."""

    evals_per_step = 1

    def start(self, x: torch.Tensor):
        return x

    def step(self, ctx: StepContext, state, predict: Callable[[torch.Tensor], torch.Tensor],
             prediction_type: str):
        return ddim_step(state, predict(state), ctx.alpha, ctx.alpha_prev, prediction_type)

    def latents(self, state) -> torch.Tensor:
        """The current latents (nb, F, C, h, w), as callbacks and the output see them."""
        return state

    def with_latents(self, state, x: torch.Tensor):
        """The state with its latents replaced by a callback's."""
        return x


def overrides(callback: StepCallback, hook: str) -> bool:
    """Whether ``callback``'s class overrides the base class's no-op ``hook``."""
    return getattr(type(callback), hook, None) is not getattr(StepCallback, hook)


@torch.no_grad()
def denoise(unet, x: torch.Tensor, schedule: Schedule, branches: Branches, *, prediction_type: str = "epsilon",
            callbacks: Sequence[StepCallback] = (), sampler: Sampler | None = None, batch_size: int = 8,
            info: CallInfo | None = None, start_step: int = 0, progress: bool = False,
            desc: str = "denoise") -> torch.Tensor:
    """Sample latents ``x`` (nb, F, C, h, w) from ``schedule.timesteps[start_step]`` to clean."""
    info = info if info is not None else CallInfo()
    info.inverting = False
    sampler = sampler or Sampler()
    guiding = [cb for cb in callbacks if overrides(cb, "on_guidance")]   # only those that change it
    starting = [cb for cb in callbacks if overrides(cb, "on_step_start")]
    state = sampler.start(x.float())
    for i in progress_bar(range(start_step, len(schedule)), desc=desc, disable=not progress, leave=False):
        t = schedule.timestep(i)
        info.step = i
        ctx = StepContext(step=i, timestep=t, alpha=float(schedule.alphas[i]),
                          alpha_prev=float(schedule.alphas_prev[i]), n_steps=len(schedule))
        uncond = branches.uncond_at(i)
        if starting:
            z = sampler.latents(state)
            for cb in starting:
                z = cb.on_step_start(ctx, z)
            state = sampler.with_latents(state, z)

        def before_cfg(u: torch.Tensor, c: torch.Tensor, frames: tuple[int, ...]):
            for cb in guiding:
                u, c = cb.on_guidance(ctx, frames, u, c)
            return u, c

        def predict(z: torch.Tensor) -> torch.Tensor:
            out = predict_noise(unet, z, t, branches.cond, uncond, branches.guidance, batch_size=batch_size,
                                info=info, before_cfg=before_cfg if guiding else None, cond_only=branches.cond_only)
            for cb in callbacks:
                out = cb.on_noise(ctx, z, out)
            return out

        state = sampler.step(ctx, state, predict, prediction_type)
        if callbacks:
            x = sampler.latents(state)
            for cb in callbacks:
                x = cb.on_step_end(ctx, x)
            state = sampler.with_latents(state, x)
    return sampler.latents(state)
