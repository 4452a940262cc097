"""A source branch whose guided output goes unread (pinned to the inversion, or at guidance 1)
runs without its unconditional half under the editors that read only its conditional half
(``cond_only_source``: prompt-to-prompt, plug-and-play): 3 UNet rows per frame and step instead
of 4, and the same edit within float rounding (the rows run in other batches). tiny-random, two
real frames at 64x64, 10 steps, guidance 7.5."""

import pytest

from tests.inversion.exact_runs import rel_error
from videdit import pipeline
from videdit.control import Control, ControlSpec
from videdit.editing import EDITORS
from videdit.metrics.work import count_work
from videdit.pipeline import EditSettings, edit_latents, invert_frames

CASES = {
    "prompt_to_prompt, source pinned": {"editor": "prompt_to_prompt", "source_branch": "pinned"},
    "plug_and_play (pinned by default)": {"editor": "plug_and_play"},
    "plug_and_play, source replayed at guidance 1": {"editor": "plug_and_play", "source_branch": "replay"},
    "prompt_to_prompt after direct, offsets in the edit": {"editor": "prompt_to_prompt", "inversion": "direct",
                                                           "inversion_params": {"offsets": "in_edit"}},
}


def settings(**kw) -> EditSettings:
    return EditSettings(source_prompt="a wolf", target_prompt="a fox", steps=10, guidance=7.5,
                        **{"inversion": "ddim", **kw})


def edit(tiny, frames, s, control=None, *, full=False, monkeypatch=None):
    """(edited latents, UNet rows per frame and step while editing, ControlNet rows likewise);
    ``full``: with the source's unconditional half run as before."""
    if full:
        monkeypatch.setattr(pipeline, "_cond_only_source", lambda branches, *args: branches)
    conditions = control.window(0, frames) if control is not None else None
    inv = invert_frames(tiny, frames, s, control=conditions)
    with count_work(tiny) as w:
        z = edit_latents(tiny, inv, s, control=conditions)
    if full:
        monkeypatch.undo()
    per = len(frames) * s.steps
    return z, w.rows("unet", "edit") / per, w.rows("controlnet", "edit") / per


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_source_runs_its_conditional_half_only(tiny, wolf_frames, case, monkeypatch):
    """Measured: relative difference 4.3e-6 (prompt_to_prompt pinned) to 4.8e-6 (after direct)."""
    s = settings(**CASES[case])
    z, rows, _ = edit(tiny, wolf_frames, s)
    z_full, rows_full, _ = edit(tiny, wolf_frames, s, full=True, monkeypatch=monkeypatch)
    assert (rows, rows_full) == (3, 4)
    assert rel_error(z, z_full) <= 5e-5


def test_with_a_controlnet_the_source_runs_its_conditional_half_only(tiny, wolf_frames, monkeypatch):
    """The ControlNet sees the same 3 rows per frame (its condition repeated per row) and its
    attention layers the full layout. Measured relative difference 3.7e-6."""
    control = Control([ControlSpec("canny", "tiny-random")], tiny)
    s = settings(**CASES["prompt_to_prompt, source pinned"])
    z, rows, cn_rows = edit(tiny, wolf_frames, s, control)
    z_full, rows_full, cn_full = edit(tiny, wolf_frames, s, control, full=True, monkeypatch=monkeypatch)
    assert (rows, cn_rows, rows_full, cn_full) == (3, 3, 4, 4)
    assert rel_error(z, z_full) <= 5e-5
    assert rel_error(z, edit(tiny, wolf_frames, s)[0]) > 1e-3   # the ControlNet acts


@pytest.mark.parametrize("kw", [{"editor": "prompt_to_prompt"},   # replayed at guidance 7.5: its output is read
                                {"editor": "masactrl", "source_branch": "pinned"},   # reads the source's both halves
                                {"editor": "prompt_to_prompt", "inversion": "direct"},   # recorded offsets
                                # pinned, and the offset for the output branch is where the source's step took it
                                {"editor": "prompt_to_prompt", "source_branch": "pinned", "inversion": "direct",
                                 "inversion_params": {"add_target": True}}],
                         ids=["p2p replayed", "masactrl pinned", "p2p after direct, recorded offsets",
                              "p2p pinned after direct, add_target"])
def test_a_source_whose_unconditional_half_is_read_runs_it(tiny, wolf_frames, kw):
    assert edit(tiny, wolf_frames, settings(**kw))[1] == 4


def test_the_editors_that_declare_it():
    assert sorted(EDITORS.having("cond_only_source")) == ["plug_and_play", "prompt_to_prompt"]
    assert not EDITORS["masactrl"].cond_only_source


def test_fused_attention_runs_on_the_calls_rows(tiny, wolf_frames, monkeypatch):
    """Where no module reads the probabilities or the attention output, a ragged call's fused
    attention runs on its own rows (3 a frame), not on the full layout's 4: prompt-to-prompt
    pinned reads probabilities at its cross-attention steps only (``probs_at``), so the
    self-attention layers and its later steps attend on 3 rows. The edit is the one above
    (test_the_source_runs_its_conditional_half_only, against the full layout within 5e-5)."""
    import torch.nn.functional as F

    from videdit.attention import processor

    batches = []

    class Counting:
        def __getattr__(self, name):
            return getattr(F, name)

        @staticmethod
        def scaled_dot_product_attention(q, *args, **kwargs):
            batches.append(q.shape[0])
            return F.scaled_dot_product_attention(q, *args, **kwargs)

    s = settings(**CASES["prompt_to_prompt, source pinned"])
    inv = invert_frames(tiny, wolf_frames, s)
    monkeypatch.setattr(processor, "F", Counting())
    edit_latents(tiny, inv, s)
    frames = len(wolf_frames)
    assert batches and set(batches) == {3 * frames}
