"""The one registry kind: unique names, discovery of a package's modules, listings with options
and declared capabilities, for inversions, editors and temporal modules alike."""

import dataclasses

import pytest

from videdit.editing import EDITORS
from videdit.errors import VideditError
from videdit.inversion import INVERSIONS
from videdit.registry import Entry, Registry
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
    assert INVERSIONS.having("inverts_frames_apart") == ["bdia", "ddim", "ddpm", "direct", "edict", "npi",
                                                         "proxedit"]
    assert TEMPORAL.having("makes_frames") == ["pixels_bilateral"]
    assert TEMPORAL.having("needs_source_branch") == ["tokenflow"]
