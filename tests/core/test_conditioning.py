import pytest
import torch

from videdit.core.conditioning import UnetCall, UnetInput, call_unet, installed, pack_pooled, unet_inputs, unpack_pooled
from videdit.core.loop import CallInfo


def test_pooled_row_round_trips():
    hidden, pooled = torch.randn(3, 77, 64), torch.randn(3, 32)
    packed = pack_pooled(hidden, pooled)                       # (3, 78, 64)
    assert packed.shape == (3, 78, 64)
    h, p = unpack_pooled(packed, 32)
    assert torch.equal(h, hidden) and torch.equal(p, pooled)
    assert float(packed[:, -1, 32:].abs().max()) == 0.0        # the rest of the row is zero
    with pytest.raises(ValueError, match="does not fit"):
        pack_pooled(torch.randn(1, 77, 16), torch.randn(1, 32))


class Shift(UnetInput):
    """Adds a constant to the sample: shows an installed input reaches the UNet."""

    def __init__(self, by: float):
        self.by = by

    def add(self, unet, call: UnetCall) -> UnetCall:
        call.sample = call.sample + self.by
        return call


class Echo(torch.nn.Module):
    def forward(self, x, t, encoder_hidden_states):
        return type("Out", (), {"sample": x})()


def test_installed_inputs_apply_in_order_and_are_removed_after_an_error():
    unet, x = Echo(), torch.zeros(2, 4, 8, 8)
    t, text = torch.zeros(2, dtype=torch.long), torch.zeros(2, 77, 32)
    with pytest.raises(RuntimeError):
        with unet_inputs(unet, [Shift(1.0)]):
            with unet_inputs(unet, [Shift(2.0)]):
                assert float(call_unet(unet, x, t, text, CallInfo()).mean()) == 3.0
                assert len(installed(unet)) == 2
            assert float(call_unet(unet, x, t, text, CallInfo()).mean()) == 1.0
            raise RuntimeError("inside")
    assert installed(unet) == ()
    assert float(call_unet(unet, x, t, text, CallInfo()).mean()) == 0.0
