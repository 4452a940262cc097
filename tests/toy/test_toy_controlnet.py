"""The toy model's ControlNets (videdit/toy/controlnet-{canny,depth,pose}, tools/train_toy_controlnet.py):
each loads by name, fits the toy model, and does what its kind is for: held-out scenes sampled from
noise under their captions come back in their edges', depth map's or skeleton's layout. Numbers
are for the committed weights; retraining means re-measuring them (the export's training.json)."""

import sys
from pathlib import Path

import pytest

from videdit.control.controlnet import TOY_CONTROLNET, TOY_CONTROLNET_DIR, TOY_CONTROLNETS, load_controlnet
from videdit.errors import VideditError
from videdit.models import load_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy():
    return load_model("toy")


@pytest.mark.parametrize("name", sorted(TOY_CONTROLNETS))
def test_each_loads_by_name_and_fits_the_toy_model(toy, name):
    import json

    loaded = load_controlnet(name, toy)
    assert loaded.name == name and loaded.net.config.block_out_channels == toy.unet.config.block_out_channels
    card = json.loads((TOY_CONTROLNETS[name] / "training.json").read_text())
    assert card.get("condition", "canny") == name.removeprefix("toy-")
    assert TOY_CONTROLNETS[TOY_CONTROLNET] == TOY_CONTROLNET_DIR


def test_a_missing_toy_controlnet_names_what_makes_it(toy, tmp_path, monkeypatch):
    monkeypatch.setitem(TOY_CONTROLNETS, "toy-depth", tmp_path / "none")
    with pytest.raises(VideditError, match=r"^toy-depth is not in .*: make it with tools/train_toy_controlnet.py "
                                           r"--condition depth --export "):
        load_controlnet("toy-depth", toy)


@pytest.mark.slow   # 10-20 s each: 16 samplings of 25 steps
@pytest.mark.parametrize("kind, measured", [("canny", 0.59), ("depth", 0.60), ("pose", 0.65)])
def test_sampled_scenes_follow_their_condition(toy, kind, measured):
    """8 held-out scenes, 25 steps at guidance 4: the largest detected object's IoU with the
    scene's is 0.22 on average without the ControlNet (the layout is the model's own) and, with
    it, 0.59 on the edges, 0.60 on the depth map, 0.65 on the skeleton (measured; the cards'
    0.70 / 0.15 are over 24 scenes)."""
    sys.path.insert(0, str(ROOT / "tools"))
    from train_toy_controlnet import evaluate

    scores = evaluate(toy, load_controlnet(f"toy-{kind}", toy).net, 8, kind=kind)
    assert scores["without"]["iou"] < 0.3 and scores["with"]["iou"] > measured - 0.09, scores
