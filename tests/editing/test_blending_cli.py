"""The edit command's --mask / --concept / --remove-concept flags and the YAML presets of the
blending and score editors."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from videdit.cli import _with_config, build_parser, editor_params, main
from videdit.errors import VideditError
from videdit.pipeline import EditSettings

ROOT = Path(__file__).resolve().parents[2]
BASE = ["--model", "tiny-random", "--steps", "2", "--no-cache", "-q", "--size", "64", "--max-frames", "2"]
PRESETS = {"blended": "blended", "diffedit": "diffedit", "differential": "differential", "ledits": "sega"}


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def write_mask(path: Path, width: int, height: int) -> Path:
    image = np.zeros((height, width), np.uint8)
    image[:, width // 2:] = 255
    cv2.imwrite(str(path), image)
    return path


def parse(*argv):
    return build_parser().parse_args(["edit", "in.mp4", "-t", "x", "-o", "out.mp4", *map(str, argv)])


def test_flags_become_editor_params():
    a = parse("--editor", "sega", "--concept", "sun glasses=7", "--remove-concept", "fog", "-E", "threshold=0.8")
    assert editor_params(a) == {"threshold": 0.8, "concepts": [{"text": "sun glasses", "remove": False, "scale": 7.0},
                                                               {"text": "fog", "remove": True}]}
    assert editor_params(parse("--editor", "blended", "--mask", "m.png")) == {"mask": "m.png"}
    assert editor_params(parse("--editor", "plain")) == {}


@pytest.mark.parametrize("argv,match", [
    (["--editor", "plain", "--mask", "m.png"], r"--mask: editor 'plain' does not take mask; use --editor with one of "
                                               r"\['blended', 'diffedit', 'differential', .*'sega'"),
    (["--editor", "blended", "--concept", "hat"], r"--concept/--remove-concept: editor 'blended' does not take "
                                                  r"concepts; use --editor with one of \['sega'\]"),
])
def test_a_flag_the_editor_does_not_take_is_an_error(argv, match):
    with pytest.raises(VideditError, match=match):
        editor_params(parse(*argv))


def test_a_concept_scale_must_be_a_number(capsys):
    with pytest.raises(SystemExit):
        parse("--editor", "sega", "--concept", "hat=big")
    assert "expected TEXT=SCALE with a number" in capsys.readouterr().err


def test_mask_flag_end_to_end(tmp_path, shared_data, capsys):
    clip = shared_data / "videos" / "wolf.mp4"                  # 512x512
    out = tmp_path / "out.mp4"
    code, stdout, err = run(capsys, "edit", clip, "-s", "a wolf", "-t", "a fox", "-o", out, "--editor", "blended",
                            "--mask", write_mask(tmp_path / "square.png", 300, 300), *BASE)
    assert code == 0, err
    assert out.stat().st_size > 0 and "wrote" in stdout and "(2 frames" in stdout
    code, _, err = run(capsys, "edit", clip, "-t", "a fox", "-o", tmp_path / "wide.mp4", "--editor", "differential",
                       "--mask", write_mask(tmp_path / "wide.png", 200, 100), *BASE)
    assert code == 2 and "aspect ratio 2.000" in err and "aspect ratio 1.000" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "wide.mp4").exists()
    code, _, err = run(capsys, "edit", clip, "-t", "a fox", "-o", tmp_path / "plain.mp4", "--mask",
                       tmp_path / "square.png", *BASE)
    assert code == 2 and "--mask: editor 'plain' does not take mask" in err


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_name_a_registered_editor_and_valid_options(preset):
    path = ROOT / "configs" / f"{preset}.yaml"
    a = _with_config(build_parser(), ["edit", "in.mp4", "-t", "x", "-o", "o.mp4", "--config", str(path)])
    assert a.editor == PRESETS[preset]
    EditSettings(inversion=a.inversion, inversion_params=dict(a.inversion_param), editor=a.editor,
                 editor_params=editor_params(a), steps=a.steps, guidance=a.guidance)


def test_ledits_preset_with_concepts_runs(tmp_path, shared_data, capsys):
    out = tmp_path / "ledits.mp4"
    code, stdout, err = run(capsys, "edit", shared_data / "videos" / "wolf.mp4", "-s", "a wolf", "-t", "a wolf",
                            "-o", out, "--config", ROOT / "configs" / "ledits.yaml", "--concept", "sunglasses=6",
                            "--remove-concept", "trees", *BASE)
    assert code == 0, err
    assert out.stat().st_size > 0
