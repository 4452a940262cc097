import pytest
import torch

from videdit.attention import module_hooks


def test_hooks_run_inside_and_are_removed_after_an_exception(tiny):
    calls = []

    def hook(module, args, out):
        calls.append(tuple(out.shape))
        return out * 0

    x, e = torch.randn(1, 4, 8, 8), tiny.encode_text(["a"])
    with pytest.raises(RuntimeError, match="boom"):
        with module_hooks(tiny.unet, {"up_blocks.*.resnets.1.conv2": hook}) as chosen:
            assert sorted(chosen) == ["up_blocks.0.resnets.1.conv2", "up_blocks.1.resnets.1.conv2",
                                      "up_blocks.2.resnets.1.conv2"]
            tiny.unet(x, torch.tensor([500]), encoder_hidden_states=e)
            raise RuntimeError("boom")
    assert len(calls) == 3
    assert not any(m._forward_hooks for m in tiny.unet.modules())


def test_bad_hook_patterns_register_nothing(tiny):
    with pytest.raises(ValueError, match="matches no module"):
        with module_hooks(tiny.unet, {"up_blocks.9.*": lambda *a: None}):
            pass
    with pytest.raises(ValueError, match="matched twice"):
        with module_hooks(tiny.unet, {"up_blocks.1.resnets.1.conv2": lambda *a: None,
                                      "up_blocks.1.resnets.*.conv2": lambda *a: None}):
            pass
    assert not any(m._forward_hooks for m in tiny.unet.modules())
