"""The one registry kind: unique names, discovery of a package's modules, listings with options
and declared capabilities, for inversions, editors and temporal modules alike."""

import dataclasses

import pytest

from videdit.editing import EDITORS
from videdit.errors import VideditError
from videdit.inversion import INVERSIONS
from videdit.registry import Departure, Entry, Registry, departs, improved
from videdit.video import TEMPORAL


@dataclasses.dataclass(frozen=True)
class Options:
    size: int = 3


def test_a_name_is_registered_once():
    things = Registry("thing", "videdit.toy")
    things.add(Entry(name="a", config=Options, summary="first", module="here"))
    with pytest.raises(VideditError, match=r"thing 'a' is registered twice \(here and there\); rename one"):
        things.add(Entry(name="a", config=Options, summary="second", module="there"))
    assert things["a"].summary == "first" and list(things) == ["a"] and len(things) == 1
    with pytest.raises(VideditError, match=r"unknown thing 'b'; choose from \['a'\]"):
        things["b"]
    assert things["a"].options() == [("size", 3)]


@pytest.mark.parametrize("registry", [INVERSIONS, EDITORS, TEMPORAL], ids=["inversions", "editors", "temporal"])
def test_registries_discover_their_package(registry):
    """Every public module of the package is imported on the first lookup; each entry has a
    one-line summary, a frozen config dataclass with defaults, and declared capabilities."""
    assert len(registry) >= 9
    for name, spec in registry.items():
        assert spec.name == name and spec.summary and "\n" not in spec.summary
        assert dataclasses.is_dataclass(spec.config) and spec.config.__dataclass_params__.frozen
        spec.config()   # every option has a default
        assert isinstance(spec.capabilities(), dict)
        assert spec.module.startswith(registry.package)


def test_registering_an_existing_name_again_fails():
    from videdit.editing import register_editor

    with pytest.raises(VideditError, match="editor 'plain' is registered twice"):
        register_editor("plain", Options)(lambda ctx, config: None)


def test_capabilities_are_declared_not_listed_by_hand():
    assert EDITORS.having("has_source_branch") == ["cross_image", "masactrl", "pix2pix_zero", "plug_and_play",
                                                   "prompt_to_prompt"]
    assert INVERSIONS.having("inverts_frames_apart") == ["bdia", "ddim", "ddpm", "direct", "edict", "fatezero",
                                                         "npi", "proxedit", "sdedit"]
    assert INVERSIONS.having("stores") == ["fatezero"] and EDITORS.having("reads") == ["fatezero"]
    assert TEMPORAL.having("makes_frames") == ["pixels_bilateral", "rerender"]
    assert TEMPORAL.having("needs_source_branch") == ["tokenflow"]


@dataclasses.dataclass(frozen=True)
class Marked:
    plain: int = 1
    window: int = departs(4, official=1, why="video only: the reference edits one image")
    iterations: int = improved(5, better=10, why="half the reconstruction error on the toy world")


def test_marked_options_are_listed_as_departures():
    entry = Entry(name="m", config=Marked, summary="marked", reference="Someone et al. 2024, someone/code")
    assert entry.options() == [("plain", 1), ("window", 4), ("iterations", 5)]
    assert entry.departures() == [
        Departure("window", 4, 1, "departs", "video only: the reference edits one image"),
        Departure("iterations", 5, 10, "improves", "half the reconstruction error on the toy world")]


def test_edit_defaults_are_the_three_settings_a_reference_fixes():
    assert Entry(name="m", config=Options, summary="", edit_defaults={"steps": 100}).edit_defaults == {"steps": 100}
    with pytest.raises(ValueError, match=r"m: edit_defaults \['eta'\] are not among \['steps', 'guidance', "
                                         r"'strength', 'steps_offset'\]"):
        Entry(name="m", config=Options, summary="", edit_defaults={"eta": 0.0})


def test_methods_lists_references_and_marked_options(capsys, monkeypatch):
    from videdit.cli import main

    monkeypatch.setenv("COLUMNS", "1000")   # no line wrapped
    with INVERSIONS.temporarily(Entry(name="test-marked", config=Marked, summary="a marked method",
                                      reference="Someone et al. 2024, someone/code",
                                      edit_defaults={"steps": 100, "guidance": 3.0})):
        main(["methods"])
    out = capsys.readouterr().out
    lines = out[out.index("test-marked"):].splitlines()
    assert lines[1].split() == ["reference:", "Someone", "et", "al.", "2024,", "someone/code"]
    assert lines[2].split() == ["reference", "settings:", "steps=100,", "guidance=3.0"]
    assert "departs from the reference: window=4 (reference: 1): video only" in out
    assert "videdit option: iterations=10 (reference and default: 5): half the reconstruction error" in out


@pytest.mark.parametrize("registry", [INVERSIONS, EDITORS], ids=["inversions", "editors"])
def test_every_method_names_its_reference(registry):
    """Issue 15: each inversion and editor names the paper and the official code (or, where
    there is none, the implementation) its defaults follow; `videdit methods` prints it."""
    missing = sorted(name for name, spec in registry.items() if len(spec.reference) < 20)
    assert not missing, f"no reference: {missing}"
    for spec in registry.values():
        for d in spec.departures():
            assert d.why and d.value != d.default, (spec.name, d)
