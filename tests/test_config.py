"""Typed options: make_config names unknown options and values of the wrong type in one line,
reads what YAML leaves as strings, and takes every registered method's defaults."""

import dataclasses
import typing
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from videdit.config import make_config
from videdit.editing import EDITORS
from videdit.errors import VideditError
from videdit.inversion import INVERSIONS
from videdit.video import TEMPORAL
from videdit.video.flow import FlowConfig
from videdit.video.keyframes import KeyframesConfig
from videdit.video.pixels_guided import PixelsGuidedConfig


def test_an_option_of_the_wrong_type_is_named():
    """A value not of the field's type is an error naming the option and what it takes, before
    the config's own range checks (which would fail on it with a bare TypeError); a number YAML
    left as a string (1e-3) is read."""
    what = "temporal module 'pixels_guided'"
    for cls, bad, message in ((PixelsGuidedConfig, {"eps": "small"}, "eps must be a number, got 'small'"),
                              (KeyframesConfig, {"every": 2.5}, "every must be a whole number, got 2.5"),
                              (KeyframesConfig, {"quantile": True}, "quantile must be a number, got True"),
                              (KeyframesConfig, {"select": 3}, "select must be a string, got 3"),
                              (PixelsGuidedConfig, {"flow": "dis"},
                               "flow must be a mapping of options or none, got 'dis'"),
                              (KeyframesConfig, {"layers": 5}, "layers must be a string or a list, got 5")):
        with pytest.raises(VideditError, match=f"^{what} {message}$"):
            make_config(cls, bad, what)
    with pytest.raises(VideditError,
                       match=r"^x does not take speed; it takes \['every', 'layers', 'offload', 'quantile', 'select'\]$"):
        make_config(KeyframesConfig, {"speed": 1}, "x")
    assert make_config(PixelsGuidedConfig, {"eps": "1e-3"}, what).eps == 1e-3
    assert make_config(KeyframesConfig, {"every": 3, "layers": ["*attn1.processor"]}, what).every == 3


def test_what_the_configs_took_stays_taken():
    """A Fraction or numpy number for a number, a Path for a file name, one string for a list the
    config makes of it, 1 for true."""
    taken = make_config(KeyframesConfig, {"quantile": Fraction(1, 2), "offload": 1}, "k")
    assert taken.quantile == 0.5 and taken.offload == 1
    assert abs(make_config(PixelsGuidedConfig, {"eps": np.float32(0.01)}, "g").eps - 0.01) < 1e-9
    assert make_config(EDITORS["prompt_to_prompt"].config, {"blend_words": "wolf"}, "p2p").blend_words == ("wolf",)
    with pytest.raises(VideditError, match="raft_weights"):   # taken as a file name, then found missing
        make_config(FlowConfig, {"method": "raft", "raft_weights": Path("/nonexistent/raft.pth")}, "flow")


def test_every_registered_config_takes_its_defaults():
    """Its hints resolve (else nothing would be checked), its defaults fit them."""
    configs = [s.config for r in (INVERSIONS, EDITORS, TEMPORAL) for s in r.values()] + [FlowConfig]
    assert len(configs) > 20
    for cls in configs:
        assert set(typing.get_type_hints(cls)) >= {f.name for f in dataclasses.fields(cls)}, cls
        config = make_config(cls, {}, cls.__name__)
        make_config(cls, {f.name: getattr(config, f.name) for f in dataclasses.fields(cls)}, cls.__name__)
