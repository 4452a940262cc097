"""ControlNet: condition images per frame (``conditions``) and the ControlNets that read them
on every UNet call of the inversion and the edit (``controlnet``). Not to be confused with
``videdit.editing.control``, the attention editors' shared helpers."""

from videdit.control.conditions import COMPUTED, GIVEN, Condition, canny, soft_edges
from videdit.control.controlnet import (
    Control,
    ControlFrames,
    ControlNetInput,
    ControlSpec,
    load_controlnet,
    pair_controls,
    parse_controlnet,
    resolve_control,
    tiny_controlnet,
)

__all__ = [
    "COMPUTED",
    "GIVEN",
    "Condition",
    "Control",
    "ControlFrames",
    "ControlNetInput",
    "ControlSpec",
    "canny",
    "load_controlnet",
    "pair_controls",
    "parse_controlnet",
    "resolve_control",
    "soft_edges",
    "tiny_controlnet",
]
