"""videdit.metrics.work: the work an edit does, counted where it runs, and the numbers designs promise.
tiny-random at 32x32 (counts do not depend on the size), 2-8 frames of the shipped sample."""

from pathlib import Path

import pytest
import torch
import yaml

import videdit
from videdit import io
from videdit.metrics import work
from videdit.metrics.work import count_work, sd15_flops, stage

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "red-circle.mp4"
SOURCE, TARGET = "a red circle on a gray background", "a blue circle on a gray background"


def counted(model, frames: int = 2, **kw):
    """(WorkCount, EditResult) of an edit of ``frames`` frames at 32x32, in one window."""
    kw = {"source_prompt": SOURCE, "target_prompt": TARGET, "window": frames, "use_cache": False, **kw}
    with count_work(model) as w:
        res = videdit.edit_video(SAMPLE, None, model=model, read=io.ReadOptions(max_frames=frames, size=(32, 32)),
                                 **kw)
    assert res.stats.frames == frames
    return w, res


def preset(name: str, **overrides) -> dict:
    """configs/NAME.yaml as edit_video keywords, without the model it names (tiny-random counts)."""
    values = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    values.pop("model", None)
    return {**values, **overrides}


def test_counts_rows_and_calls_per_stage(tiny):
    """direct + prompt_to_prompt, 3 steps, guidance 7.5, 2 frames in one UNet batch: the inversion
    is 3 unguided calls of 2 rows (DDIM) and 3 guided calls of 4 rows (the recorded pass); the
    edit 3 calls of 8 rows (2 halves x 2 branches x 2 frames); 2 frames encoded and 2 decoded."""
    w, _ = counted(tiny, steps=3, guidance=7.5, inversion="direct", editor="prompt_to_prompt")
    assert (w.calls("unet", "invert"), w.rows("unet", "invert")) == (6, 18)
    assert (w.calls("unet", "edit"), w.rows("unet", "edit")) == (3, 24)
    assert w.rows("unet") == 42
    assert (w.rows("vae_encoder", "invert"), w.rows("vae_encoder", "edit")) == (2, 0)
    assert (w.rows("vae_decoder", "invert"), w.rows("vae_decoder", "edit")) == (0, 2)
    assert w.per_frame(2)["unet_edit"] == 12.0


def test_hooks_are_removed_and_the_stage_restored_on_error(tiny):
    before = (dict(tiny.unet._forward_pre_hooks), dict(tiny.vae.decoder._forward_pre_hooks),
              dict(torch.nn.modules.module._global_forward_pre_hooks))
    with pytest.raises(RuntimeError, match="inside"):
        with count_work(tiny), stage("invert"):
            assert work._STAGE.get() == "invert"
            raise RuntimeError("inside")
    assert work._STAGE.get() == "edit"
    assert (dict(tiny.unet._forward_pre_hooks), dict(tiny.vae.decoder._forward_pre_hooks),
            dict(torch.nn.modules.module._global_forward_pre_hooks)) == before
    with pytest.raises(ValueError, match="unknown stage 'decode'"):
        with stage("decode"):
            pass


def test_controlnet_rows_are_counted(tiny):
    """A ControlNet runs beside every UNet call: as many rows as the UNet, in both stages."""
    from videdit.control import ControlSpec

    w, _ = counted(tiny, steps=2, guidance=7.5, control=[ControlSpec("canny", "tiny-random")])
    assert w.rows("controlnet", "invert") == w.rows("unet", "invert") == 4
    assert w.rows("controlnet", "edit") == w.rows("unet", "edit") == 8


def test_a_cached_inversion_costs_no_unet_evaluation(tiny, tmp_path):
    """The second edit of the same clip reads its inversion from the cache: no UNet row and no
    VAE encoding in the inversion stage, the edit's own rows unchanged."""
    kw = dict(steps=3, inversion="ddim", editor="prompt_to_prompt", use_cache=True, cache_dir=tmp_path)
    first, _ = counted(tiny, **kw)
    again, res = counted(tiny, **kw)
    assert res.stats.cache_hits == 1
    assert first.rows("unet", "invert") == 6 and again.rows("unet", "invert") == 0
    assert again.rows("vae_encoder") == 0
    assert again.rows("unet", "edit") == first.rows("unet", "edit") == 24


def test_fatezero_runs_no_source_branch_at_edit_time(tiny):
    """configs/fatezero.yaml fuses the maps stored while inverting: its edit evaluates one guided
    branch (2 rows per frame and step), as the plain editor's does, after an unguided inversion
    of 1 row per frame and step."""
    steps = 3
    w, _ = counted(tiny, **preset("fatezero", steps=steps, window=2))
    plain, _ = counted(tiny, steps=steps, guidance=7.5, inversion="ddim", editor="plain")
    assert w.per_frame(2)["unet_edit"] == plain.per_frame(2)["unet_edit"] == 2 * steps
    assert w.per_frame(2)["unet_invert"] == steps


def test_keyframes_only_runs_touch_only_keyframes(tiny):
    """configs/recolour.yaml edits keyframes 0, 4, 7 of 8 (every 4 and the last) and makes the others
    in pixels: UNet rows and decoded frames are 3/8 of the same edit on every frame. Per frame and
    step: 1 inversion row (DDIM; direct's offsets taken in the edit), 3 edit rows (the target's two
    halves, the pinned source's conditional half)."""
    kw = preset("recolour", steps=2)
    keyframes, _ = counted(tiny, frames=8, **kw)
    every, _ = counted(tiny, frames=8, **{**kw, "temporal": {}})
    assert every.rows("unet") == 8 * 2 * (1 + 3)
    assert keyframes.rows("unet") * 8 == every.rows("unet") * 3
    assert keyframes.rows("unet", "edit") * 8 <= every.rows("unet", "edit") * 3
    assert (keyframes.rows("vae_decoder"), every.rows("vae_decoder")) == (3, 8)


@pytest.mark.slow
def test_direct_prompt_to_prompt_at_50_steps_today(tiny):
    """Today's count per frame for prompt-to-prompt after ``direct`` at 50 steps, guidance 7.5:
    inverting, 50 DDIM rows and 100 of the recorded pass (guided, 2 rows a step); editing, 200
    (source and target branch, both guided). Issue 20's bound is 50 + 150: the bound test below.
    9 s: test_counts_rows_and_calls_per_stage checks the same per step at 3 steps by default."""
    w, _ = counted(tiny, frames=1, steps=50, guidance=7.5, inversion="direct", editor="prompt_to_prompt")
    r = w.per_frame(1)
    assert (r["unet_invert"], r["unet_edit"]) == (150, 200)


@pytest.mark.slow
def test_direct_prompt_to_prompt_meets_the_issue_bound(tiny):
    """Issue 20: at most 50 inversion + 150 edit UNet frame-evaluations per frame at 50 steps, with
    direct's offsets taken in the edit (``-I offsets=in_edit``): 50 DDIM rows, then 50 steps of the
    target's two halves and the pinned source's conditional half. 7 s."""
    w, _ = counted(tiny, frames=1, steps=50, guidance=7.5, inversion="direct", editor="prompt_to_prompt",
                   inversion_params={"offsets": "in_edit"})
    r = w.per_frame(1)
    assert (r["unet_invert"], r["unet_edit"]) == (50, 150)


def test_direct_prompt_to_prompt_with_offsets_in_the_edit_per_step(tiny):
    """The bound above at 3 steps, in the default suite: 3 unguided inversion calls of 2 rows, 3
    edit calls of 6 rows (target: 2 halves; source: conditional) for 2 frames."""
    w, _ = counted(tiny, steps=3, guidance=7.5, inversion="direct", editor="prompt_to_prompt",
                   inversion_params={"offsets": "in_edit"})
    assert (w.calls("unet", "invert"), w.rows("unet", "invert")) == (3, 6)
    assert (w.calls("unet", "edit"), w.rows("unet", "edit")) == (3, 18)


def test_flops_are_rows_times_the_sd15_figures(tiny, monkeypatch):
    monkeypatch.setattr(work, "sd15_flops", lambda: {"unet": 10.0, "vae_encoder": 100.0, "vae_decoder": 1000.0})
    w, _ = counted(tiny, steps=2, guidance=1.0, inversion="ddim", editor="plain")
    assert (w.rows("unet", "invert"), w.rows("unet", "edit")) == (4, 4)
    assert w.flops("invert") == 4 * 10 + 2 * 100 and w.flops("edit") == 4 * 10 + 2 * 1000
    assert w.flops() == 2280 and w.per_frame(2)["tflop"] == 1140 / 1e12


@pytest.mark.slow
def test_sd15_unet_flops_are_the_convolutions_and_linears_plus_attention():
    """FlopCounterMode on the meta device (3 s): SD 1.5's UNet at 512x512 is issue 20's 677 GFLOP
    (its layers without the attention products) plus 4 T (T + 77) C for the scores and weighted
    sums of each transformer block's self- and cross-attention (T tokens, C channels), to 0.1%."""
    blocks = {(64 * 64, 320): 5, (32 * 32, 640): 5, (16 * 16, 1280): 5, (8 * 8, 1280): 1}
    attention = sum(n * 4 * t * (t + 77) * c for (t, c), n in blocks.items())
    assert attention == pytest.approx(126.0e9, rel=1e-2)
    f = sd15_flops()
    assert f["unet"] == pytest.approx(677e9 + attention, rel=1e-3)
    assert f["vae_decoder"] > f["vae_encoder"] > f["unet"]
