"""Null-text inversion (videdit/inversion/null_text.py): against DDIM's reconstruction, against
diffusers' StableDiffusionPipeline, and the official notebook's schedule. Numbers measured on
tiny-random with the two wolf frames (64x64)."""

import dataclasses

import pytest
import torch

from tests.inversion.approximate_runs import recon_error, rel_error, settings
from tests.peers import stable_diffusion
from videdit.inversion.null_text import NullTextConfig
from videdit.pipeline import edit_latents, invert_frames, reconstruct


def test_null_text_reconstructs_far_better_than_ddim_at_guidance(tiny, wolf_frames):
    """10 steps at guidance 7.5: DDIM 2.80; NTI with 10 Adam steps at lr 0.1 (tiny-random's
    embeddings need a larger rate than SD's 1e-2) measured 0.31, with 30 steps 0.03."""
    ddim, _ = recon_error(tiny, wolf_frames, settings())
    nti, inv = recon_error(tiny, wolf_frames, settings("null_text", inner_steps=10, lr=0.1))
    assert ddim > 2.5
    assert nti < 0.2 * ddim, (nti, ddim)
    null = inv.extras["null_embeds"]
    assert null.shape == (10, 2, *tiny.encode_text([""]).shape[1:])  # (N, F, L, D)
    assert (null[:, 0] - null[:, 1]).norm() > 1  # each frame fits its own embedding
    torch.testing.assert_close(inv.trajectory, invert_frames(tiny, wolf_frames, settings(scale=1)).trajectory)


def test_null_text_without_updates_is_ddim_and_counts_evals(tiny, wolf_frames):
    """inner_steps=0: the null embedding stays the negative prompt, so the replay is DDIM's
    at 7.5; it costs the pivot (10) plus a conditional and an unconditional forward per step."""
    s = settings("null_text", inner_steps=0)
    err, inv = recon_error(tiny, wolf_frames, s)
    ddim, _ = recon_error(tiny, wolf_frames, settings())
    assert err == pytest.approx(ddim, rel=1e-5)
    assert inv.unet_evals == 10 + 2 * 10


def test_null_text_frames_are_independent_of_batching(tiny, wolf_frames):
    """Frames fitted together (one batch) or apart (batch_size=1) reconstruct the same. (The
    embeddings themselves differ where the gradient is ~0: Adam's first step is lr * sign(g),
    so rounding noise flips those entries by 2 lr, without effect on the output.)"""
    s = settings("null_text", inner_steps=2, lr=0.1, early_stop=0.0)
    together = invert_frames(tiny, wolf_frames, s)
    apart = invert_frames(tiny, wolf_frames, dataclasses.replace(s, batch_size=1))
    torch.testing.assert_close(reconstruct(tiny, apart, s), reconstruct(tiny, together, s), atol=1e-3, rtol=1e-3)
    assert apart.unet_evals == together.unet_evals == 10 + 10 * (1 + 2 * 2 + 1)


def test_null_text_replay_matches_diffusers_with_the_null_embedding_swapped_in(tiny, wolf_frames):
    """The edit from a null-text inversion is diffusers' StableDiffusionPipeline started from the
    inverted noise, its negative prompt embedding set to the fitted null_i at every step through
    ``callback_on_step_end`` (fp32, one frame, 4 steps, guidance 7.5): the same latents to 1e-5
    (diffusers keeps alpha-bar in fp32, videdit in fp64: the last bits differ, and guidance
    amplifies them over the steps)."""
    s = settings("null_text", steps=4, target="a red fox", inner_steps=3, lr=0.1)
    inv = invert_frames(tiny, wolf_frames[:1], s)
    ours = edit_latents(tiny, inv, s)
    null = inv.extras["null_embeds"][:, 0]                   # (N, L, D)
    target = tiny.encode_text(["a red fox"])

    def swap(pipe, i, t, kwargs):                          # after step i: step i + 1's embedding
        nxt = null[min(i + 1, len(null) - 1)][None]
        return {"prompt_embeds": torch.cat([nxt, target])}

    theirs = stable_diffusion(tiny)(prompt_embeds=target, negative_prompt_embeds=null[:1], latents=inv.noise,
                                num_inference_steps=4, guidance_scale=7.5, output_type="latent",
                                callback_on_step_end=swap, callback_on_step_end_tensor_inputs=["prompt_embeds"]).images
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)   # measured: at most 9.2e-6 apart
    assert rel_error(ours, reconstruct(tiny, inv, s)) > 0.05   # the target prompt changed the output


class _Adam(torch.optim.Adam):
    """torch's Adam, recording the learning rate each optimiser was made with and its updates."""

    made: list = []

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.updates = 0
        _Adam.made.append(self)

    def step(self, closure=None):
        self.updates += 1
        return super().step(closure)


def test_null_text_follows_the_reference_schedule(tiny, wolf_frames, monkeypatch):
    """google/prompt-to-prompt null_text_w_ptp.ipynb, NullInversion.null_optimization: step i's
    Adam runs at 1e-2 * (1 - i / 100); each inner iteration updates and then stops the step if
    the loss it measured before the update is below 1e-5 + i * 2e-5. With the threshold 0 at step
    0 and huge from step 1 on, step 0 makes all 3 updates and each later step exactly one (the
    update before the test), and the embeddings move at every step."""
    monkeypatch.setattr(_Adam, "made", [])
    monkeypatch.setattr(torch.optim, "Adam", _Adam)
    inv = invert_frames(tiny, wolf_frames[:1], settings("null_text", steps=5, inner_steps=3))
    assert [o.defaults["lr"] for o in _Adam.made] == pytest.approx([1e-2 * (1 - i / 100) for i in range(5)])
    assert NullTextConfig().step_threshold(7) == pytest.approx(1e-5 + 7 * 2e-5)
    _Adam.made.clear()
    s = settings("null_text", steps=5, inner_steps=3, early_stop=0.0, early_stop_growth=1e9)
    inv = invert_frames(tiny, wolf_frames[:1], s)
    assert [o.updates for o in _Adam.made] == [3, 1, 1, 1, 1]
    null, empty = inv.extras["null_embeds"][:, 0], tiny.encode_text([""])[0]
    assert all(float((null[i] - (null[i - 1] if i else empty)).abs().max()) > 1e-3 for i in range(5))
    assert inv.unet_evals == 5 + 5 * 2 + 2 * (3 + 1 + 1 + 1 + 1)   # pivot; cond + final; fwd + bwd per update


def test_null_text_fits_only_the_steps_the_edit_runs(tiny, wolf_frames, monkeypatch):
    """Strength 0.6 of 5 steps: the edit starts at step 2, so only steps 2..4 are fitted, from
    the pivot's z*_2, each at its learning rate in the whole schedule; the record starts there
    and replays (measured 0.22 against DDIM's 0.42 at the same strength)."""
    monkeypatch.setattr(_Adam, "made", [])
    monkeypatch.setattr(torch.optim, "Adam", _Adam)
    s = dataclasses.replace(settings("null_text", steps=5, inner_steps=2, lr=0.1), strength=0.6)
    inv = invert_frames(tiny, wolf_frames[:1], s)
    assert inv.start_step == 2 and inv.extras["null_embeds"].shape[0] == 3
    assert [o.defaults["lr"] for o in _Adam.made] == pytest.approx([0.1 * (1 - i / 100) for i in (2, 3, 4)])
    torch.testing.assert_close(inv.noise, inv.trajectory[2])
    assert inv.unet_evals <= 5 + 3 * (2 + 2 * 2)
    ddim = dataclasses.replace(settings(steps=5), strength=0.6)
    ddim_err = rel_error(reconstruct(tiny, invert_frames(tiny, wolf_frames[:1], ddim), ddim), inv.source)
    assert rel_error(reconstruct(tiny, inv, s), inv.source) < 0.7 * ddim_err
