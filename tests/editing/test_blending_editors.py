"""What the blending and score editors (blended, diffedit, differential, sega, ledits) share, tested across
them on tiny-random with real frames: outside a mask the result is the source, and bad options are
errors with the fix. Each editor's own tests are in its file (test_blended.py, ...)."""

import pytest
import torch

from tests.editing.blending_runs import edit, left_half
from videdit.errors import VideditError
from videdit.pipeline import EditSettings


@pytest.fixture(scope="module")
def inverted(blending_inverted):
    return blending_inverted


# the options that blend with the inversion's own trajectory through the last step (videdit's);
# the references' defaults end one noise level off the source (blended, diffedit) or denoise it
# once more (differential): their tests compare with the official samplers (test_blended.py, ...)
ON_THE_TRAJECTORY = {"blended": {"from_inversion": True}, "diffedit": {"aligned_blend": True},
                     "differential": {"from_inversion": True}}


@pytest.mark.parametrize("inversion", ["ddim", "ddpm", "edict"])
@pytest.mark.parametrize("editor", sorted(ON_THE_TRAJECTORY))
def test_outside_the_mask_is_the_source(tiny, inverted, editor, inversion):
    """A binary mask, blending on the inversion's trajectory: outside it, the result is the source
    latent (trajectory[-1]), which for an exact inversion is its reconstruction; inside, the target
    prompt changed it."""
    s, inv, rec = inverted(inversion)
    mask = left_half()
    z = edit(tiny, s, inv, editor, mask=mask, **ON_THE_TRAJECTORY[editor])   # (F, C, h, w)
    out, inside = (mask == 0).expand_as(z), (mask == 1).expand_as(z)
    torch.testing.assert_close(z[out], inv.source[out], atol=1e-6, rtol=0)
    if float((rec - inv.source).norm() / inv.source.norm()) < 1e-4:  # exact inversion
        assert float((z[out] - rec[out]).norm() / rec[out].norm()) < 1e-4
    change = float((z[inside] - rec[inside]).norm() / rec[inside].norm())
    assert change > 0.05, f"{editor} x {inversion}: the inside did not change ({change:.2e})"


@pytest.mark.parametrize("editor,params,match", [
    ("blended", {"mask": "nope.png"}, "does not exist"),
    ("blended", {"blend_until": 2}, "blend_until"),
    ("diffedit", {"mask_encode_strength": 0}, "mask_encode_strength"),
    ("diffedit", {"n_samples": 0}, "n_samples"),
    ("differential", {"mask": 3}, "file path or a tensor"),
    ("differential", {"map": "nope.png"}, "does not exist"),
    ("sega", {"concepts": [{"txt": "a"}]}, "does not take txt"),
    ("sega", {"concepts": [{"text": "a", "scale": -1}]}, "remove=true"),
    ("sega", {"threshold": 1.0}, "threshold"),
    ("sega", {"masking": "noise"}, "does not take masking"),
    ("sega", {"warmup": 3, "cooldown": 2}, "cooldown"),
    ("sega", {"concepts": [{"text": "a", "weight": -1}]}, "weight"),
    ("ledits", {"masking": "both"}, "masking"),
    ("ledits", {"threshold": 1.0}, "threshold"),
    ("ledits", {"attention_resolution": 3}, "power of two"),
])
def test_bad_options_are_errors_with_the_fix(editor, params, match):
    with pytest.raises(VideditError, match=match):
        EditSettings(editor=editor, editor_params=params)


@pytest.mark.parametrize("editor", ["blended", "differential"])
def test_an_editor_that_reads_only_the_source_inverts_nothing(tiny, wolf_frames, editor):
    """The references start from their own noise and read only the clean source latents: with a mask (and
    from_inversion off) after an inversion that replays as plain DDIM, the edit runs no UNet inverting and gives
    what it gives from a DDIM inversion's record, bit for bit. Without a mask (plain regeneration), from the
    inversion, or after an inversion with its own replay (null-text's embeddings), it inverts as asked."""
    from videdit.pipeline import edit_latents, invert_frames

    mask = left_half()
    kw = dict(source_prompt="a wolf", target_prompt="a fox", steps=4, editor=editor)
    s = EditSettings(**kw, inversion="fixed_point", editor_params={"mask": mask})
    assert s.source_only and s.inversion_method.name == "sdedit"
    rows = []
    hook = tiny.unet.register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))
    try:
        inv = invert_frames(tiny, wolf_frames, s)
    finally:
        hook.remove()
    assert rows == [] and inv.unet_evals == 0
    ddim = invert_frames(tiny, wolf_frames, EditSettings(**kw, inversion="ddim",
                                                         editor_params={"mask": mask, "from_inversion": True}))
    assert ddim.unet_evals > 0 and torch.equal(edit_latents(tiny, inv, s), edit_latents(tiny, ddim, s))
    for inversion, params in (("ddim", {}), ("ddim", {"mask": mask, "from_inversion": True}),
                              ("null_text", {"mask": mask})):
        resolved = EditSettings(**kw, inversion=inversion, editor_params=params)
        assert not resolved.source_only and resolved.inversion_method.name == inversion
