"""BDIA (videdit/inversion/bdia.py): a callback's change keeps its kept latent consistent."""

import torch

from tests.inversion.exact_runs import ZeroCorner, replay_context, settings_for
from videdit.inversion import INVERSIONS
from videdit.pipeline import invert_frames


def test_bdia_callback_change_moves_the_kept_latent(tiny, wolf_frames):
    inv = invert_frames(tiny, wolf_frames, settings_for("bdia"))
    sampler = INVERSIONS["bdia"].replay(inv, replay_context(tiny), INVERSIONS["bdia"].config()).sampler
    x_prev, x = inv.trajectory[0][None], inv.trajectory[1][None]
    state = (x_prev, 0.5, x)
    moved = ZeroCorner().on_step_end(None, x)
    new = sampler.with_latents(state, moved)
    torch.testing.assert_close(new[0] - new[2], x_prev - x, check_dtype=False)
    assert sampler.with_latents(sampler.start(x), moved)[0] is None  # first step: nothing kept yet
