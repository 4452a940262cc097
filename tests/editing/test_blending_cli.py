"""The edit command's --mask / --concept / --remove-concept flags across the blending and score
editors, and their YAML presets. SEGA's and LEDITS++'s own flag and preset tests are in test_sega.py and
test_ledits.py."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.editing.edit_command import BASE, ROOT, parse, run
from videdit.cli import _with_config, build_parser, editor_params
from videdit.errors import VideditError
from videdit.pipeline import EditSettings

PRESETS = {"blended": "blended", "diffedit": "diffedit", "differential": "differential", "ledits": "ledits",
           "ddpm": "plain"}


def write_mask(path: Path, width: int, height: int) -> Path:
    image = np.zeros((height, width), np.uint8)
    image[:, width // 2:] = 255
    cv2.imwrite(str(path), image)
    return path


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
                                                  r"concepts; use --editor with one of \['ledits', 'sega'\]"),
])
def test_a_flag_the_editor_does_not_take_is_an_error(argv, match):
    with pytest.raises(VideditError, match=match):
        editor_params(parse(*argv))


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


@pytest.mark.parametrize("preset,expected", [
    # scripts/text_editing_SD2.py: 50 steps, guidance 7.5, 12 skipped, DDIMScheduler(...) with steps_offset 0
    ("blended", {"steps": 50, "guidance": 7.5, "start_step": 12, "steps_offset": 0, "inversion_guidance": 1.0}),
    # SD2/run.py: 100 steps at guidance 7, the whole schedule
    ("differential", {"steps": 100, "guidance": 7.0, "start_step": 0, "steps_offset": None,
                      "inversion_guidance": 1.0}),
    # diffusers' DiffEdit: inpaint_strength 0.8, invert at guidance 7.5 under the source prompt
    ("diffedit", {"steps": 50, "guidance": 7.5, "start_step": 10, "steps_offset": None, "inversion_guidance": 7.5}),
])
def test_presets_use_the_references_settings(preset, expected):
    path = ROOT / "configs" / f"{preset}.yaml"
    a = _with_config(build_parser(), ["edit", "in.mp4", "-t", "x", "-o", "o.mp4", "--config", str(path)])
    s = EditSettings(inversion=a.inversion, inversion_params=dict(a.inversion_param), editor=a.editor,
                     editor_params=editor_params(a), steps=a.steps, guidance=a.guidance, strength=a.strength,
                     steps_offset=a.steps_offset)
    got = {"steps": s.steps, "guidance": s.guidance, "start_step": s.start_step, "steps_offset": s.steps_offset,
           "inversion_guidance": s.inversion_config.guidance}
    assert got == expected
