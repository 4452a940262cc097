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


def test_probabilities_only_at_the_steps_that_read_them(tiny, wolf_frames, monkeypatch):
    """prompt-to-prompt edits cross-attention maps in its first 80% of steps (the reference's
    cross_replace 0.8: 8 of 10): the other 2 steps run every cross-attention layer fused, and the
    edit is the one with explicit probabilities at every step within float rounding (measured
    relative difference 1.4e-7)."""
    import torch.nn.functional as F

    from tests.inversion.exact_runs import rel_error
    from videdit.editing.prompt_to_prompt import CrossAttentionControl
    from videdit.pipeline import EditSettings, edit_latents, invert_frames

    s = EditSettings(source_prompt="a wolf", target_prompt="a fox", steps=10, editor="prompt_to_prompt",
                     source_branch="pinned")
    inv = invert_frames(tiny, wolf_frames, s)
    text_tokens = tiny.encode_text([""]).shape[1]
    n_cross = sum(name.endswith("attn2.processor") for name in tiny.unet.attn_processors)
    fused, sdpa = [], F.scaled_dot_product_attention

    def attention(q, k, v, **kw):
        if k.shape[-2] == text_tokens != q.shape[-2]:   # the UNet's cross-attention (not the text encoder's)
            fused.append(q.shape[0])
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", attention)
    z = edit_latents(tiny, inv, s)
    assert len(fused) == 2 * n_cross   # the last 2 steps, every cross-attention layer
    monkeypatch.setattr(CrossAttentionControl, "probs_at", lambda self, call: True)
    fused.clear()
    assert rel_error(z, edit_latents(tiny, inv, s)) <= 1e-5 and fused == []
