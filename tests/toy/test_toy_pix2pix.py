"""The toy model's InstructPix2Pix UNet (videdit/toy/pix2pix, tools/train_toy_pix2pix.py): it loads by
name as an InstructPix2Pix model on the toy model's other parts, and does what InstructPix2Pix is for:
held-out scenes edited by their recoloured caption keep their layout (the source image's channels)
and take the asked colour. Numbers are for the committed weights; retraining means re-measuring
them (the export's training.json)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from videdit import edit_image
from videdit.errors import VideditError
from videdit.models import load_model
from videdit.models.loading import TOY_PIX2PIX_DIR

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pix2pix():
    return load_model("toy-pix2pix")


def test_it_loads_by_name_on_the_toy_models_parts(pix2pix):
    toy = load_model("toy")
    assert pix2pix.family == "InstructPix2Pix" and pix2pix.unet.config.in_channels == 8
    assert pix2pix.fingerprint != toy.fingerprint and (TOY_PIX2PIX_DIR / "training.json").exists()
    for a, b in zip(pix2pix.vae.parameters(), toy.vae.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(VideditError, match="does not run on InstructPix2Pix models"):   # as timbrooks' model
        edit_image(np.zeros((64, 64, 3), np.uint8), model=pix2pix, editor="prompt_to_prompt",
                   target_prompt="a red circle", steps=2)


@pytest.mark.slow   # 8 edits of 20 steps
def test_held_out_scenes_take_the_asked_colour_in_their_layout(pix2pix):
    """8 held-out scenes edited as configs/text2video-zero.yaml edits (Euler ancestral, text
    guidance 7.5, image guidance 1.0, 20 steps): the asked colour on 62% of them, the front
    object's IoU with the source's 0.81 (measured; the card's 83% / 0.84 are over 24 scenes; at
    175 training steps, before it used the image, 17% / 0.10 on 6)."""
    sys.path.insert(0, str(ROOT / "tools"))
    from train_toy_pix2pix import evaluate

    scores = evaluate(pix2pix, 8)
    assert scores["colour"] >= 0.5 and scores["iou"] >= 0.7, scores
