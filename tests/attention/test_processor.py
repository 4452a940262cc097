import torch

from videdit.attention import AttentionModule, attention_processors, compose
from videdit.core.loop import CallInfo


def unet_out(tiny, plan=None):
    torch.manual_seed(0)
    x, e = torch.randn(2, 4, 8, 8), tiny.encode_text(["a", "b"])
    with attention_processors(tiny.unet, plan):
        return tiny.unet(x, torch.tensor([500, 500]), encoder_hidden_states=e).sample


class Reader(AttentionModule):
    needs_probs = True

    def __init__(self, cross=None):
        self.cross, self.seen = cross, []

    def probs(self, call, p):
        self.seen.append((call.layer, call.cross, tuple(p.shape)))
        assert torch.allclose(p.sum(-1), torch.ones_like(p[..., 0]), atol=1e-5)
        return p


def test_composed_processor_equals_diffusers(tiny):
    base = unet_out(tiny)
    info = CallInfo(n_branches=1, frames=(0, 1))
    torch.testing.assert_close(unet_out(tiny, compose(tiny.unet, [AttentionModule()], info)), base)  # fused path
    reader = Reader()
    torch.testing.assert_close(unet_out(tiny, compose(tiny.unet, [reader], info)), base, rtol=1e-4, atol=1e-5)
    assert reader.seen and {c for _, c, _ in reader.seen} == {True, False}


def test_only_wanted_layers_get_explicit_attention(tiny):
    reader = Reader(cross=True)
    plan = compose(tiny.unet, [reader], CallInfo(frames=(0, 1)))
    assert plan and all(name.endswith("attn2.processor") for name in plan)
    unet_out(tiny, plan)
    assert all(c for _, c, _ in reader.seen)
    assert {s[-1] for _, _, s in reader.seen} == {77}  # keys are the 77 text tokens


def test_modules_stack_on_one_layer_in_order(tiny):
    order = []

    class Tag(AttentionModule):
        layers = "*down_blocks.0*attn1*"

        def __init__(self, name):
            self.name = name

        def output(self, call, out):
            order.append(self.name)
            return out

    plan = compose(tiny.unet, [Tag("first"), Tag("second")], CallInfo(frames=(0, 1)))
    assert len(plan) == 1
    unet_out(tiny, plan)
    assert order == ["first", "second"]


def test_split_gives_the_loop_layout(tiny):
    shapes = []

    class Layout(AttentionModule):
        cross = True

        def qkv(self, call, q, k, v):
            shapes.append(tuple(call.split(q).shape[:3]))
            return q, k, v

    info = CallInfo(n_branches=2, frames=(0,), guided=False)
    unet_out(tiny, compose(tiny.unet, [Layout()], info))  # batch 2 = 2 branches x 1 frame
    assert set(shapes) == {(1, 2, 1)}
