"""Every editor, inversion and temporal module runs with a ControlNet attached (tiny-random and
its ControlNet; editors and inversions on 64x64 frames, 8x8 latents, sampling 2 steps or more;
temporal modules on 32x32 frames, 2 steps, as their own
matrix runs), and the ControlNet acts in each."""

import numpy as np
import pytest
import torch

from tests.families import runs_on
from tests.inversion.exact_runs import rel_error
from tests.video.clips import SOURCE, TARGET, sliding_texture
from tests.video.test_module import EDITOR_OPTIONS, STACKS
from videdit.control import Control, ControlSpec
from videdit.editing import EDITORS
from videdit.errors import VideditError
from videdit.inversion import INVERSIONS
from videdit.pipeline import EditSettings, edit_frames, edit_latents, invert_frames
from videdit.video import TEMPORAL, Window


@pytest.fixture(scope="module")
def frames():
    return sliding_texture(4)[:, ::2, ::2]   # (4, 32, 32, 3)


@pytest.fixture(scope="module")
def large():
    return sliding_texture(2)   # (2, 64, 64, 3)


@pytest.fixture(scope="module")
def control(tiny):
    return Control([ControlSpec("canny", "tiny-random")], tiny)


def settings(editor="plain", inversion=None, temporal=None, steps=2):
    return EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=steps, batch_size=2, editor=editor,
                        inversion=inversion, editor_params=EDITOR_OPTIONS.get(editor, {}), temporal=temporal or {},
                        strength=1.0 if editor == "blended" else None)


def two_steps_run(**kw) -> EditSettings:
    """Settings that sample at least two steps: 4 where the method's reference strength would
    leave one of 2 (``start_step`` 1), else 2."""
    s = settings(**kw)
    return settings(**kw, steps=4) if s.start_step else s


def changed(a, b) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def test_every_text_to_image_method_takes_a_controlnet():
    """No method that runs on SD1 declares it cannot (``Entry.controlnet``); the matrix below runs
    each. instruct_pix2pix (InstructPix2Pix models only) says why not."""
    for registry in (EDITORS, INVERSIONS, TEMPORAL):
        assert all(registry[name].controlnet is True for name in runs_on(registry, "SD1")), registry.kind
    assert EDITORS["instruct_pix2pix"].controlnet.startswith("its reference conditions on the source frame's")


def edit(tiny, frames, s, control):
    """The edited latents of the frames, inverted and edited with ``control``'s conditions (or none)."""
    conditions = control.window(0, frames) if control is not None else None
    inv = invert_frames(tiny, frames, s, control=conditions)
    return edit_latents(tiny, inv, s, control=conditions)


@pytest.mark.parametrize("editor", runs_on(EDITORS, "SD1"))
def test_every_editor_with_a_controlnet(tiny, large, control, editor):
    """Measured relative change of the edited latents 0.059 (cross_image, 2 of 4 steps at its
    strength 0.68) and up."""
    s = two_steps_run(editor=editor)
    z = edit(tiny, large, s, control)
    assert z.shape == (2, 4, 8, 8) and torch.isfinite(z).all()
    assert rel_error(z, edit(tiny, large, s, None)) > 0.03


@pytest.mark.parametrize("inversion", runs_on(INVERSIONS, "SD1"))
def test_every_inversion_with_a_controlnet(tiny, large, control, inversion):
    """Measured relative change of the edited latents 0.085 (bdia) and up. (pix2pix_zero's
    inversion gives NaN on 4x4 latents, with or without a ControlNet: hence 8x8 here.)"""
    s = two_steps_run(inversion=inversion)
    z = edit(tiny, large, s, control)
    assert z.shape == (2, 4, 8, 8) and torch.isfinite(z).all()
    assert rel_error(z, edit(tiny, large, s, None)) > 0.03


@pytest.mark.parametrize("module", sorted(STACKS))
def test_every_temporal_module_with_a_controlnet(tiny, frames, control, module):
    """Two windows of two frames through one stack, as edit_video runs them (a module that edits a
    subset of a window's frames gets those frames' conditions), with an editor that runs a source
    branch (tokenflow reads it). Measured mean change 1.1 levels (pixels_bilateral) and up."""
    s = settings(editor="prompt_to_prompt", temporal=STACKS[module])

    def run(control):
        stack = s.temporal_stack()
        out = np.concatenate([edit_frames(tiny, frames[i:i + 2], s, start=i, temporal=stack, last=i == 2,
                                          control=control) for i in (0, 2)])
        if stack.second_pass:
            out = np.concatenate([stack.finish_clip(Window(i, 2, frames[i:i + 2], last=i == 2)) for i in (0, 2)])
        return out

    out = run(control)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert changed(out, run(None)) > 0.5


def test_a_method_that_cannot_is_refused_by_name(tiny, frames, control, monkeypatch):
    import dataclasses

    from videdit.pipeline import edit_image

    spec = dataclasses.replace(EDITORS["plain"], name="no_cn", controlnet="it reads the UNet's own skip features")
    with EDITORS.temporarily(spec):
        with pytest.raises(VideditError) as e:
            edit_image(frames[0], model=tiny, editor="no_cn", steps=2, use_cache=False, size="source",
                       control=[ControlSpec("canny", "tiny-random")])
    assert str(e.value) == "editor 'no_cn' does not run with a ControlNet: it reads the UNet's own skip features"


def test_cross_image_leaves_its_appearance_image_uncontrolled(tiny, large, control):
    """With an appearance image, its branch (1) gets no ControlNet residuals: its condition would
    be the clip's, not the image's. The edit runs and the ControlNet still acts on the others."""
    from videdit.pipeline import edit_context

    appearance = large[1, ::-1].copy()   # another picture
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=4, editor="cross_image",
                     editor_params={"appearance": appearance})
    inv = invert_frames(tiny, large[:1], s)
    plan = s.editor_spec.plan(edit_context(tiny, inv, s), s.editor_config)
    assert plan.uncontrolled == (1,)
    z = edit(tiny, large[:1], s, control)
    assert z.shape == (1, 4, 8, 8) and rel_error(z, edit(tiny, large[:1], s, None)) > 0.03
