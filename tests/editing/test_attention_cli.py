"""The attention editors' CLI shortcuts (--replace, --reweight, --blend-words) and presets.
Prompt-to-Prompt's car-turn preset is tested in test_prompt_to_prompt.py."""

from pathlib import Path

import pytest

from videdit.cli import build_parser, editor_params, main, _with_config
from videdit.pipeline import EditSettings

BASE = ["--model", "tiny-random", "--steps", "2", "--no-cache", "-q", "--size", "64", "--max-frames", "1"]
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PRESETS = ["p2p-replace.yaml", "p2p-refine-reweight.yaml", "pnp.yaml", "masactrl.yaml"]


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def test_shortcut_for_an_editor_that_does_not_take_it_is_an_error(tmp_path, shared_data, capsys):
    out = tmp_path / "out.png"
    code, _, err = run(capsys, "edit", shared_data / "videos" / "wolf.mp4", "-t", "a wolf", "-o", out,
                       "--replace", "0.5", *BASE)
    assert code == 2 and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--replace: editor 'plain' does not take cross_replace" in lines[0]
    assert "prompt_to_prompt" in lines[0]


def test_shortcuts_feed_the_editor(tmp_path, shared_data, capsys):
    out = tmp_path / "out.png"
    code, stdout, err = run(capsys, "edit", shared_data / "videos" / "wolf.mp4", "-s", "a wolf in a forest",
                            "-t", "a robot wolf in a forest", "-o", out, "--editor", "prompt_to_prompt",
                            "--replace", "0.5", "--reweight", "robot=2", "--reweight", "wolf=0.5",
                            "--blend-words", "wolf", "robot", *BASE)
    assert code == 0, err
    assert out.exists() and "wrote" in stdout
    args = build_parser().parse_args(["edit", "x.mp4", "-t", "t", "-o", "o.mp4", "--editor", "prompt_to_prompt",
                                      "--replace", "0.5", "--reweight", "robot=2", "--blend-words", "a", "b"])
    assert editor_params(args) == {"cross_replace": 0.5, "reweight": {"robot": 2.0}, "blend_words": ["a", "b"]}


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_validate(preset):
    args = _with_config(build_parser(), ["edit", "x.mp4", "-t", "t", "-o", "o.mp4", "--config", str(CONFIGS / preset)])
    EditSettings(editor=args.editor, editor_params=editor_params(args), inversion=args.inversion,
                 inversion_params=dict(args.inversion_param), steps=args.steps, guidance=args.guidance)
    assert args.editor in ("prompt_to_prompt", "plug_and_play", "masactrl") and args.steps == 50
