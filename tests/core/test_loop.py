import torch

import pytest

from videdit.core.loop import Branches, CallInfo, StepCallback, denoise, frame_batches, predict_noise
from videdit.core.schedule import make_schedule


class CountingUNet(torch.nn.Module):
    """Output = 0.1 * x + a per-sample constant from the text; records each call's batch."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.dtype = torch.float32

    def forward(self, x, t, encoder_hidden_states):
        self.calls.append(x.shape[0])
        return type("Out", (), {"sample": 0.1 * x + encoder_hidden_states.mean((1, 2)).view(-1, 1, 1, 1)})()


def test_frames_go_through_the_unet_in_batches():
    unet = CountingUNet()
    x = torch.randn(1, 10, 4, 8, 8)
    cond, uncond = torch.ones(1, 3, 5), torch.zeros(1, 3, 5)
    out = predict_noise(unet, x, 10, cond, uncond, (7.5,), batch_size=4)
    assert unet.calls == [8, 8, 4]  # (2 halves) x 4 frames, 4, then 2 x 2
    torch.testing.assert_close(out, 0.1 * x + 7.5)  # uncond + 7.5 * (cond - uncond)
    unet.calls.clear()
    predict_noise(unet, x, 10, cond, uncond, (1.0,), batch_size=4)
    assert unet.calls == [4, 4, 2]  # guidance 1: no unconditional half


def test_lead_frames_go_first_together():
    assert frame_batches(7, 3) == [(0, 1, 2), (3, 4, 5), (6,)]
    assert frame_batches(7, 2, lead=(6, 0, 3)) == [(0, 3, 6), (1, 2), (4, 5)]   # the lead batch may exceed 2
    with pytest.raises(ValueError, match="not frames of a 7-frame batch"):
        frame_batches(7, 2, lead=(7,))
    seen = []

    class Recorder(CountingUNet):
        def forward(self, x, t, encoder_hidden_states):
            seen.append((info.batch, info.frames))
            return super().forward(x, t, encoder_hidden_states)

    info = CallInfo(lead_frames=(4, 1))
    x = torch.randn(1, 5, 4, 8, 8)
    cond = torch.arange(5.0).view(1, 5, 1, 1).expand(1, 5, 3, 5)   # per-frame text: frame f's is f
    out = predict_noise(Recorder(), x, 10, cond, None, (1.0,), batch_size=2, info=info)
    assert seen == [(0, (1, 4)), (1, (0, 2)), (2, (3,))]
    torch.testing.assert_close(out, 0.1 * x + torch.arange(5.0).view(1, 5, 1, 1, 1))   # each frame in its place


def test_batching_does_not_change_the_result(tiny):
    s = make_schedule(tiny.scheduler_config, 4)
    x = torch.randn(1, 5, 4, 8, 8)
    text = tiny.encode_text(["a", ""])
    b = Branches(cond=text[:1], uncond=text[1:], guidance=(3.0,))
    one = denoise(tiny.unet, x, s, b, batch_size=1)
    five = denoise(tiny.unet, x, s, b, batch_size=5)
    torch.testing.assert_close(one, five, rtol=1e-4, atol=1e-4)


def test_callbacks_see_every_step_and_can_change_latents():
    seen = []

    class Pin(StepCallback):
        def on_step_end(self, ctx, x):
            seen.append((ctx.step, ctx.timestep))
            return torch.zeros_like(x)

    unet = CountingUNet()
    s = make_schedule({"num_train_timesteps": 1000, "steps_offset": 1}, 5)
    info = CallInfo()
    x = denoise(unet, torch.randn(1, 2, 4, 4, 4), s, Branches(torch.zeros(1, 3, 5), torch.zeros(1, 3, 5), (1.0,)),
                callbacks=[Pin()], info=info)
    assert [i for i, _ in seen] == [0, 1, 2, 3, 4]
    assert [t for _, t in seen] == s.timesteps.tolist()
    assert torch.count_nonzero(x) == 0
    assert info.step == 4 and info.frames == (0, 1) and not info.inverting


def test_guidance_hook_sees_each_batch_before_cfg():
    """``on_guidance`` gets the unguided halves of every frame batch, on guided steps only."""
    seen = []

    class DropDirection(StepCallback):
        def on_guidance(self, ctx, frames, uncond, cond):
            seen.append((ctx.step, frames))
            return uncond, uncond  # no guidance direction left: CFG gives uncond

    unet = CountingUNet()
    s = make_schedule({"num_train_timesteps": 1000, "steps_offset": 1}, 2)
    x = torch.randn(1, 3, 4, 4, 4)
    cond, uncond = torch.ones(1, 3, 5), torch.zeros(1, 3, 5)
    hooked = denoise(unet, x, s, Branches(cond, uncond, (7.5,)), callbacks=[DropDirection()], batch_size=2)
    assert seen == [(0, (0, 1)), (0, (2,)), (1, (0, 1)), (1, (2,))]
    torch.testing.assert_close(hooked, denoise(unet, x, s, Branches(cond, uncond, (0.0,))))  # scale 0: uncond
    seen.clear()
    denoise(unet, x, s, Branches(cond, uncond, (1.0,)), callbacks=[DropDirection()])
    assert seen == []  # unguided: nothing to combine


def test_step_start_hook_changes_what_the_model_sees():
    """``on_step_start`` runs before each step's model call, and the model sees its latents."""
    seen = []

    class Shift(StepCallback):
        def on_step_start(self, ctx, x):
            seen.append(ctx.step)
            return x + 1

    class Recorder(CountingUNet):
        def forward(self, x, t, encoder_hidden_states):
            inputs.append(x.clone())
            return super().forward(x, t, encoder_hidden_states)

    inputs = []
    s = make_schedule({"num_train_timesteps": 1000, "steps_offset": 1}, 3)
    x = torch.randn(1, 2, 4, 4, 4)
    denoise(Recorder(), x, s, Branches(torch.zeros(1, 3, 5), torch.zeros(1, 3, 5), (1.0,)), callbacks=[Shift()],
            start_step=1)
    assert seen == [1, 2]
    torch.testing.assert_close(inputs[0], x[0] + 1)   # the first call already sees the shifted latents


class RowUNet(torch.nn.Module):
    """Output = x + the text's mean per sample; records each call's text rows' means (which row ran)."""

    def __init__(self):
        super().__init__()
        self.texts = []
        self.dtype = torch.float32

    def forward(self, x, t, encoder_hidden_states):
        self.texts.append(encoder_hidden_states.mean((1, 2)).tolist())
        return type("Out", (), {"sample": x + encoder_hidden_states.mean((1, 2)).view(-1, 1, 1, 1)})()


def test_a_cond_only_branch_runs_without_its_unconditional_half():
    """Three branches (texts 1, 2, 3; unconditional -1, -2, -3), branch 1 cond_only: the call
    holds 2 + 3 rows per frame, (uncond 0, uncond 2, cond 0, cond 1, cond 2); branch 1's output
    is its conditional one, the others' are guided as before."""
    unet, x = RowUNet(), torch.zeros(3, 2, 1, 2, 2)
    cond = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1).expand(3, 4, 5)
    info = CallInfo()
    out = predict_noise(unet, x, 10, cond, -cond, (7.5, 7.5, 4.0), info=info, cond_only=(1,))
    assert unet.texts == [[-1, -1, -3, -3, 1, 1, 2, 2, 3, 3]]   # (row, frame) in batch order
    assert info.rows() == [(0, 0), (0, 2), (1, 0), (1, 1), (1, 2)] and info.ragged
    want = torch.tensor([-1 + 7.5 * 2, 2.0, -3 + 4.0 * 6]).view(3, 1, 1, 1, 1).expand_as(x)
    torch.testing.assert_close(out, want)
    full = predict_noise(RowUNet(), x, 10, cond, -cond, (7.5, 7.5, 4.0))
    torch.testing.assert_close(out[[0, 2]], full[[0, 2]])
    # the full (half, branch, frame) layout and back: the missing rows are the branch's conditional ones
    batch = torch.tensor([-1, -1, -3, -3, 1, 1, 2, 2, 3, 3.0])
    assert info.to_full(batch).tolist() == [-1, -1, 2, 2, -3, -3, 1, 1, 2, 2, 3, 3]
    torch.testing.assert_close(info.to_run(info.to_full(batch)), batch)
    # an unguided call runs no unconditional half at all: nothing to leave out
    predict_noise(unet, x, 10, cond, -cond, (1.0, 1.0, 1.0), info=info, cond_only=(1,))
    assert not info.ragged and info.rows() == [(0, 0), (0, 1), (0, 2)] and unet.texts[-1] == [1, 1, 2, 2, 3, 3]
