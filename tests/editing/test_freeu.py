"""FreeU as cross-image attention's official code applies it (videdit/editing/freeu.py against
garibida/cross-image-attention models/unet_2d_condition.py), on tiny-random."""

import numpy as np
import torch

from videdit.attention import module_hooks
from videdit.editing.freeu import fourier_filter, freeu, freeu_hooks


def _official(x: np.ndarray, b: float, s: float) -> np.ndarray:
    """FreeUUNet2DConditionModel.forward: sample[:, :C/2] *= b, then Fourier_filter(threshold=1, scale=s)."""
    x = x.copy()
    x[:, :x.shape[1] // 2] *= b
    f = np.fft.fftshift(np.fft.fftn(x, axes=(-2, -1)), axes=(-2, -1))
    h, w = x.shape[-2:]
    f[..., h // 2 - 1:h // 2 + 1, w // 2 - 1:w // 2 + 1] *= s
    return np.fft.ifftn(np.fft.ifftshift(f, axes=(-2, -1)), axes=(-2, -1)).real


def test_freeu_scales_the_backbone_and_its_low_frequencies():
    """The widest width (SD's 1280) takes b1 = 1.2 and s1 = 0.9, the next (640) b2 = 1.4 and s2 = 0.2;
    other widths pass unchanged."""
    g = torch.Generator().manual_seed(0)
    for channels, b, s in ((64, 1.2, 0.9), (32, 1.4, 0.2)):
        x = torch.randn(2, channels, 8, 8, generator=g)
        y = freeu(x, (64, 32), (1.2, 1.4), (0.9, 0.2))
        np.testing.assert_allclose(y.numpy(), _official(x.double().numpy(), b, s), rtol=0, atol=1e-5)
        assert (y - x).abs().max() > 0.1
    x = torch.randn(1, 48, 8, 8, generator=g)
    assert torch.equal(freeu(x, (64, 32), (1.2, 1.4), (0.9, 0.2)), x)
    torch.testing.assert_close(fourier_filter(x, 1.0), x, rtol=0, atol=1e-5)
    small = torch.randn(1, 4, 2, 2, generator=g)     # a 2x2 grid: the whole spectrum is the centre
    torch.testing.assert_close(fourier_filter(small, 0.5), small * 0.5, rtol=0, atol=1e-6)


def test_freeu_hooks_the_inputs_of_the_decoder_blocks(tiny):
    """The mid block's and every up block's output but the last enter a decoder block; tiny-random's
    widths are 64 and 32. The hooks change the UNet's output and are gone after the block."""
    unet = tiny.unet
    hooks = freeu_hooks(unet, 1.2, 1.4, 0.9, 0.2)
    assert sorted(hooks) == ["mid_block", "up_blocks.0", "up_blocks.1"]
    x = torch.randn(1, 64, 8, 8)
    torch.testing.assert_close(hooks["up_blocks.1"](None, (), x), freeu(x, (64, 32), (1.2, 1.4), (0.9, 0.2)))
    z, text = torch.randn(1, 4, 8, 8), tiny.encode_text(["a wolf"])
    with torch.no_grad():
        before = unet(z, 500, encoder_hidden_states=text).sample
        with module_hooks(unet, hooks):
            hooked = unet(z, 500, encoder_hidden_states=text).sample
        after = unet(z, 500, encoder_hidden_states=text).sample
    assert torch.equal(before, after) and float((hooked - before).norm() / before.norm()) > 1e-2
