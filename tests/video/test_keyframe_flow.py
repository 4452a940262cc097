"""Keyframe flow: the frames between keyframes from the keyframes' latents warped along the
source's flow, where the keyframes see them; their own latents where none does."""

import numpy as np
import torch

from videdit.core import CallInfo, StepContext, make_schedule
from videdit.inversion import Inversion
from videdit.video import TemporalContext, TemporalStack, Window
from videdit.video.keyframe_flow import KeyframeFlow, KeyframeFlowConfig
from videdit.video.keyframes import Keyframes, KeyframesConfig
from videdit.video.warp import warp

from tests.video.clips import LAST, texture


def flow_callback(tiny, frames, every):
    n = len(frames)
    inv = Inversion(method="ddim", trajectory=torch.zeros(3, n, 4, 8, 8))
    ctx = TemporalContext(model=tiny, inversion=inv, schedule=make_schedule(tiny.scheduler_config, 2), info=CallInfo(),
                          n_branches=1, output_branch=0, source_branch=None)
    stack = TemporalStack([Keyframes(KeyframesConfig(every=every)), KeyframeFlow(KeyframeFlowConfig())])
    (_, plan), = [p for p in stack.plans(Window(0, n, frames), ctx) if p[0] == "keyframe_flow"]
    return plan.callbacks[0]


def test_flow_blends_keyframes_where_they_see_and_keeps_the_frame_where_they_do_not(tiny):
    """On the latent grid, no VAE round trip: after the last step the latents themselves,
    before it the predicted clean latents (re-noised with the step's noise)."""
    base = texture((64, 64, 3), 150, 250)
    frames = np.repeat(base[None], 5, axis=0)
    frames[2] = base - 150                      # no keyframe sees it (photometric occlusion everywhere)
    cb = flow_callback(tiny, frames, every=4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 5, 4, 8, 8, generator=gen)
    out = cb.on_step_end(StepContext(step=1, **LAST), x)
    assert torch.equal(out[0, [0, 2, 4]], x[0, [0, 2, 4]])         # keyframes stay; occluded: its own latent
    torch.testing.assert_close(out[0, 1], 0.75 * x[0, 0] + 0.25 * x[0, 4])   # still: blend by distance
    torch.testing.assert_close(out[0, 3], 0.25 * x[0, 0] + 0.75 * x[0, 4])
    # an earlier step fuses x0 = (x - sqrt(1 - a) eps) / sqrt(a), eps the model's output
    step0 = StepContext(step=0, timestep=500, alpha=0.3, alpha_prev=0.5, n_steps=2)
    z, eps = (torch.randn(1, 5, 4, 8, 8, generator=gen) for _ in range(2))
    cb.on_noise(step0, z, eps)
    out = cb.on_step_end(step0, x)
    x0, new = ((v[0] - 0.5 ** 0.5 * eps[0]) / 0.5 ** 0.5 for v in (x, out))
    torch.testing.assert_close(new[[0, 2, 4]], x0[[0, 2, 4]])
    torch.testing.assert_close(new[1], 0.75 * x0[0] + 0.25 * x0[4])


def test_flow_warps_the_keyframes_onto_a_moving_frame(tiny):
    """A texture sliding 2 px left a frame, a quarter of a latent cell: frame 1's latent is
    (z0 warped by +1/4 cell + z2 warped by -1/4 cell) / 2, z0 and z2 the keyframes' latents."""
    base = texture((64, 96, 3), 0, 255, seed=1)
    frames = np.stack([base[:, 2 * i:2 * i + 64] for i in range(3)])  # frame1(x) = frame0(x + 2) = frame2(x - 2)
    cb = flow_callback(tiny, frames, every=2)
    x = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    made = cb.on_step_end(StepContext(step=1, **LAST), x)[0, 1]
    shift = torch.zeros(2, 8, 8, 2)
    shift[0, ..., 0], shift[1, ..., 0] = 0.25, -0.25
    want = 0.5 * warp(x[0, [0, 2]], shift).sum(0)
    inner = (slice(None), slice(1, -1), slice(1, -1))                  # away from the borders
    err = (made - want)[inner].abs().mean()
    assert err < 0.1 * (made - 0.5 * (x[0, 0] + x[0, 2]))[inner].abs().mean() and err < 0.02
