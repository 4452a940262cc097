"""The presets table's machinery (``tools/tables.py presets``): settings read from the presets'
files, their independent counterpart, and one row's columns on one toy clip of 3 frames."""

import sys
from pathlib import Path

import pytest

from videdit.errors import VideditError

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "videdit" / "toy" / "model"
sys.path.insert(0, str(ROOT / "tools"))
import tables  # noqa: E402  (tools/tables.py)


def test_preset_settings_read_the_file_with_toy_scale_and_overrides():
    s = tables.preset_settings("fatezero")
    assert (s["inversion"], s["editor"], s["steps"], s["guidance"], s["window"]) == ("fatezero", "fatezero", 50, 7.5, 8)
    assert s["inversion_params"] == {"anchor": "mid", "min_channels": 128, "max_tokens": 64}   # toy scale
    t = tables.preset_settings("tokenflow", guidance=4.0, steps=10)
    assert (t["guidance"], t["steps"], t["seed"]) == (4.0, 10, 1)
    assert t["inversion_params"] == {"inversion_steps": 500, "start_noise": "renoised"}
    assert s["toy_model"] == t["toy_model"] == "toy"   # in the place of SD 1.4 and 2.1-base
    assert t["negative_prompt"].startswith("ugly, blurry") and t["temporal"] == {"tokenflow": {"batch_size": 8}}


def test_pose_and_depth_presets_run_the_toy_controlnets_on_each_clips_true_maps(tmp_path, monkeypatch):
    """Their files' ControlNets become the toy model's pose and depth ones at the files' scale; each
    clip's maps are written as a folder and given as ``--control KIND=FOLDER`` (2 steps, 2 frames);
    without the toy ControlNet the row says what makes it."""
    import cv2

    from videdit import load_model
    from videdit.control import controlnet

    for kind in ("pose", "depth"):
        s = tables.preset_settings(f"text2video-zero-{kind}")
        assert s["given_control"] == (kind, [f"toy-{kind}=1.0"]) and "control" not in s
    (clip,) = tables.toy_clips(0, 1, 2, ["translate"])
    (row,) = tables.run_preset(tables.preset_settings("text2video-zero-depth", steps=2), [clip], load_model("toy"),
                               tmp_path)
    assert row["evals"] == 4.0 and len(row["ok"]) == 2   # no inversion: 2 guided steps
    written = [cv2.imread(str(tmp_path / "clip0-depth" / f"{t:04d}.png"))[..., ::-1] for t in range(2)]
    assert (written == clip.condition("depth")).all()
    monkeypatch.setitem(controlnet.TOY_CONTROLNETS, "toy-pose", tmp_path / "none")
    with pytest.raises(VideditError, match=r"needs the toy ControlNet toy-pose in .*--condition pose makes it"):
        tables.preset_settings("text2video-zero-pose")


def test_text2video_zero_runs_the_toy_instruct_pix2pix():
    s = tables.preset_settings("text2video-zero")
    assert (s["toy_model"], s["editor"], s["inversion"], s["steps"], s["editor_params"]) == (
        "toy-pix2pix", "instruct_pix2pix", "noise", 50, {"image_guidance": 1.0})
    assert s["token_merging"] == 0.0   # the file's tome: 0.0 (off, as the reference's default)
    assert tables.preset_settings("fatezero")["toy_model"] == "toy"


def test_toy_model_option_replaces_the_toy_model_but_not_its_pix2pix(monkeypatch):
    """``--toy-model DIR`` reaches each row's process and replaces "toy" there; the toy
    InstructPix2Pix keeps the shipped model, whose text encoder its UNet reads."""
    import argparse
    import json
    import subprocess
    from unittest import mock

    assert [tables.row_model(n, "runs/x") for n in ("toy", "toy-pix2pix")] == ["runs/x", "toy-pix2pix"]
    assert tables.row_model("toy", None) == "toy"
    a = argparse.Namespace(clips=1, frames=3, seed=0, kinds=["translate"], guidance=None, steps=None, save=None,
                           toy_model="runs/x")
    done = subprocess.CompletedProcess([], 0, stdout=json.dumps({"clips": []}), stderr="")
    with mock.patch.object(subprocess, "run", return_value=done) as run:
        tables._in_child(a, "fatezero")
    cmd = run.call_args.args[0]
    assert cmd[cmd.index("--toy-model") + 1] == "runs/x" and "--guidance" not in cmd


def test_canny_presets_run_the_toy_controlnet_at_their_files_scale():
    (rerender,) = tables.preset_settings("rerender")["control"]
    (t2v,) = tables.preset_settings("text2video-zero-canny")["control"]
    assert (rerender.condition.kind, rerender.condition.thresholds, rerender.controlnet, rerender.scale) == (
        "canny", (50, 100), "toy-canny", 0.7)
    assert (t2v.condition.kind, t2v.controlnet, t2v.scale) == ("canny", "toy-canny", 1.0)


def test_independent_editing_keeps_the_editor_and_drops_the_temporal_mechanism():
    s = tables.independent(tables.preset_settings("fatezero"))
    assert s["inversion_params"]["anchor"] == "none" and s["temporal"] == {}
    r = tables.independent(tables.preset_settings("rerender"))
    assert (r["temporal"], r["inversion"], r["strength"], r["steps"]) == ({}, "sdedit", 0.75, 20)


@pytest.mark.skipif(not (TOY / "model_index.json").exists(), reason="toy model not exported")
def test_one_row_on_one_clip(tmp_path):
    """FateZero at 2 steps on a 2-frame translate clip: the unguided inversion is one UNet row
    per frame and step, the edit two (guidance), so 2 + 2 * 2 = 6 rows per output frame; the
    other columns are numbers in their ranges; the ground-truth recolouring leaves the
    background unchanged (0 levels); ``save`` keeps the edited frames, which score as the row."""
    import cv2

    from videdit import load_model
    from videdit.toy.scores import clip_frame_success, recoloured

    (clip,) = tables.toy_clips(0, 1, 2, ["translate"])
    (row,) = tables.run_preset(tables.preset_settings("fatezero", steps=2), [clip], load_model("toy"), tmp_path,
                               save=tmp_path / "saved")
    saved = [cv2.imread(str(tmp_path / "saved" / "clip0" / f"{t:04d}.png"))[..., ::-1] for t in range(2)]
    assert [clip_frame_success(f, clip, t, recoloured(clip)[1]) for t, f in enumerate(saved)] == row["ok"]
    assert row["evals"] == 6.0
    assert len(row["ok"]) == 2 and all(isinstance(h, bool) for h in row["ok"])
    assert all(c or not h for c, h in zip(row["colour_ok"], row["ok"]))   # an edited frame has the asked colour
    assert 0 < row["warp"] < 255 and 0 < row["background"] < 255
    assert tables.background_change(tables.truth(clip, recoloured(clip)[1]), clip) == 0.0


def test_what_is_found_names_what_the_success_test_reads():
    """On the ground-truth recolourings of the table's translate and occlude clips (seeds 0 and 3):
    the front object's colour, the one object's shape read in place and its IoU, the back object's
    colour where enough of it shows."""
    from videdit.toy.scores import recoloured

    translate, occlude = (tables.toy_clips(seed, 1, 12, [kind])[0] for seed, kind in ((0, "translate"),
                                                                                       (3, "occlude")))
    found = tables.what_is_found(tables.truth(translate, "blue")[0], translate, 0)
    assert recoloured(translate)[1] == "blue" and found.startswith("blue circle IoU ") and float(found[-4:]) >= 0.95
    assert recoloured(occlude)[1] == "orange"
    assert tables.what_is_found(tables.truth(occlude, "orange")[0], occlude, 0) == "orange, back red"
    assert tables.what_is_found(occlude.frames[0], occlude, 0) == "purple, back red"


def test_the_toy_model_card_carries_edits_after_an_inversion(monkeypatch, tmp_path):
    """``tools/toy_scores.py`` scores the model's edits of world scenes after DDIM inversion (here one
    scene at 3 steps) and its card gives them with the table command that scores the same."""
    import argparse

    import toy_scores

    monkeypatch.setattr(toy_scores, "EDIT_STEPS", 3)
    e = toy_scores.edit_scores(str(TOY), 1)
    assert set(e) == {"colour_ok", "colour_iou", "colour_bg_psnr", "shape_ok", "shape_iou", "shape_bg_psnr"}
    assert e["colour_ok"] in (0.0, 1.0) and 0 <= e["colour_iou"] <= 1 and 5 < e["colour_bg_psnr"] <= 60
    args = argparse.Namespace(model=str(TOY), n=2, steps=2, guidance=[4.0], timesteps=[200], edit_scenes=1)
    results = {"attn_iou_shape_word": 0.5, "attn_iou_colour_word": 0.5, "guidance_4": {"colour_acc": 1.0},
               "edits": e}
    _, te, vae, unet, _ = toy_scores.load(str(TOY), toy_scores.torch.device("cpu"))
    card = toy_scores.model_card(tmp_path, unet, te, vae, results, args).splitlines()
    assert card[-1].startswith("- Edits of 1 one-object world scenes (seed 7) after DDIM inversion, prompt_to_prompt "
                               "at its defaults, 3 steps, guidance 4 (`python tools/tables.py methods --scenes 1 "
                               "--steps 3 --guidance 4 --only prompt_to_prompt` scores the same): colour edit ")
