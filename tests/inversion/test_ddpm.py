"""DDPM inversion (videdit/inversion/ddpm.py): skip, and the noise's seed and sharing across frames."""

import dataclasses

import pytest
import torch

from tests.inversion.exact_runs import rel_error, settings_for
from videdit.core.schedule import make_schedule
from videdit.errors import VideditError
from videdit.inversion import INVERSIONS
from videdit.pipeline import edit_latents, invert_frames, reconstruct


@pytest.mark.parametrize("skip", [0.3, 3])
def test_ddpm_skip_starts_later_and_stays_exact(tiny, wolf_frames, two_branch, skip):
    name, seen = two_branch
    s = settings_for("ddpm", inversion_params={"skip": skip})
    inv = invert_frames(tiny, wolf_frames, s)
    assert inv.start_step == 3 and torch.equal(inv.noise, inv.trajectory[3])
    assert inv.unet_evals == 2 * 7  # guided, steps 3..9 only
    assert torch.count_nonzero(inv.extras["noise_maps"][:3]) == 0
    assert rel_error(reconstruct(tiny, inv, s), inv.source) <= 1e-4
    out = edit_latents(tiny, inv, dataclasses.replace(s, editor=name))  # both branches use the same maps
    assert [i for i, _ in seen] == list(range(3, 10))
    assert rel_error(out, inv.source) <= 1e-4
    with pytest.raises(VideditError, match="leaves no step"):
        invert_frames(tiny, wolf_frames, settings_for("ddpm", steps=3, inversion_params={"skip": 3}))


def test_ddpm_noise_follows_the_seed(tiny, wolf_frames):
    a = invert_frames(tiny, wolf_frames[:1], settings_for("ddpm", steps=2, seed=1))
    b = invert_frames(tiny, wolf_frames[:1], settings_for("ddpm", steps=2, seed=2))
    assert not torch.equal(a.noise, b.noise)


def test_ddpm_noise_is_shared_by_the_frames_unless_asked_per_frame(tiny, wolf_frames):
    """noise='shared' (the default): x_i - sqrt(a_i) x_0 is the same draw for both frames, and
    a frame's trajectory is the one it gets inverted alone; noise='frame': a draw per frame. One
    frame alone gets the same noise either way."""

    def drawn(inv):   # (N, F, C, h, w): the noise of each step's latent
        a = make_schedule(tiny.scheduler_config, inv.n_steps).alphas.view(-1, 1, 1, 1, 1)
        return (inv.trajectory[:-1] - a.sqrt() * inv.source) / (1 - a).sqrt()

    shared_s = settings_for("ddpm", steps=3)
    frame_s = settings_for("ddpm", steps=3, inversion_params={"noise": "frame"})
    shared, frame = invert_frames(tiny, wolf_frames, shared_s), invert_frames(tiny, wolf_frames, frame_s)
    assert float((drawn(shared)[:, 0] - drawn(shared)[:, 1]).abs().max()) < 1e-4
    assert float((drawn(frame)[:, 0] - drawn(frame)[:, 1]).abs().mean()) > 0.5
    alone = invert_frames(tiny, wolf_frames[1:], shared_s)
    assert float((alone.trajectory[:, 0] - shared.trajectory[:, 1]).abs().max()) < 1e-4
    one_frame = invert_frames(tiny, wolf_frames[:1], frame_s)
    assert torch.equal(invert_frames(tiny, wolf_frames[:1], shared_s).trajectory, one_frame.trajectory)
    ddpm = INVERSIONS["ddpm"]
    assert ddpm.inverts_frames_apart(shared_s.inversion_config)
    assert not ddpm.inverts_frames_apart(frame_s.inversion_config)
    with pytest.raises(VideditError, match="ddpm noise must be one of"):
        invert_frames(tiny, wolf_frames, settings_for("ddpm", inversion_params={"noise": "per-frame"}))
