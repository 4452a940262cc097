"""SDXL through the pipeline and the CLI: the model family check where the settings meet the model
(``pipeline.check_methods``), and ``videdit edit --model tiny-sdxl`` / ``--model DIR``."""

import dataclasses

import pytest

from tests.test_cli import run
from videdit import io
from videdit.editing import EDITORS
from videdit.errors import VideditError
from videdit.inversion import INVERSIONS
from videdit.models.tiny import save_tiny_sdxl
from videdit.pipeline import EditSettings, check_methods, edit_image
from videdit.registry import NOT_INSTRUCT
from videdit.video import TEMPORAL, TemporalModule, TemporalSpec

NO_SDXL = {"families": ("SD1", "SD2"), "refuses": {"SDXL": "a test's reason", **NOT_INSTRUCT}}


@dataclasses.dataclass(frozen=True)
class _NoOptions:
    pass


class _NoSdxl(TemporalModule):
    name, config_class = "_no_sdxl", _NoOptions


def test_each_stage_is_checked_with_one_line(tiny, tiny_sdxl):
    with pytest.raises(VideditError) as e:
        check_methods(tiny_sdxl, EditSettings(editor="fatezero"))
    assert str(e.value) == f"editor 'fatezero' does not run on SDXL models: {EDITORS['fatezero'].refuses['SDXL']}"
    check_methods(tiny, EditSettings(editor="fatezero"))                        # SD 1.x: runs
    with INVERSIONS.temporarily(dataclasses.replace(INVERSIONS["ddim"], name="_no_sdxl", **NO_SDXL)):
        with pytest.raises(VideditError) as e:
            check_methods(tiny_sdxl, EditSettings(inversion="_no_sdxl"))
    assert str(e.value) == "inversion '_no_sdxl' does not run on SDXL models: a test's reason"
    spec = TemporalSpec(name="_no_sdxl", config=_NoOptions, summary="a test", module_class=_NoSdxl, **NO_SDXL)
    with TEMPORAL.temporarily(spec):
        settings = EditSettings(temporal={"_no_sdxl": {}})
        check_methods(tiny, settings)
        with pytest.raises(VideditError) as e:
            check_methods(tiny_sdxl, settings)
    assert str(e.value) == "temporal module '_no_sdxl' does not run on SDXL models: a test's reason"


def test_edit_image_refuses_before_any_work(tiny_sdxl, shared_data, tmp_path):
    src = shared_data / "videos" / "car-turn" / "00000.png"
    with pytest.raises(VideditError, match="editor 'fatezero' does not run on SDXL models"):
        edit_image(src, tmp_path / "o.png", model=tiny_sdxl, editor="fatezero", steps=2, use_cache=False)
    assert not (tmp_path / "o.png").exists()


def test_cli_edits_an_image_with_tiny_sdxl(shared_data, tmp_path, capsys):
    src = shared_data / "videos" / "car-turn" / "00000.png"
    out = tmp_path / "out.png"
    code, _, err = run(capsys, "edit", src, "--model", "tiny-sdxl", "-s", "a car", "-t", "a jeep", "--steps", "2",
                       "-o", out, "--no-cache", "-q")
    assert code == 0, err
    (edited,), _ = io.read_clip(out)
    (source,), _ = io.read_clip(src)
    assert edited.shape == source.shape                          # worked at tiny-sdxl's 64 short side, written back
    code, _, err = run(capsys, "edit", src, "--model", "tiny-sdxl", "-t", "a jeep", "--editor", "fatezero",
                       "--steps", "2", "-o", tmp_path / "refused.png", "--no-cache", "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "refused.png").exists()
    assert err.startswith("videdit: error: editor 'fatezero' does not run on SDXL models: its stored cross-attention")


def test_cli_loads_a_saved_sdxl_directory(shared_data, tmp_path, capsys):
    model = save_tiny_sdxl(tmp_path / "tiny-sdxl")
    out = tmp_path / "out.png"
    code, _, err = run(capsys, "edit", shared_data / "videos" / "car-turn" / "00000.png", "--model", model,
                       "-s", "a car", "-t", "a jeep", "--steps", "2", "-o", out, "--no-cache", "-q")
    assert code == 0, err
    (edited,), _ = io.read_clip(out)
    assert edited.ndim == 3 and edited.std() > 1.0
