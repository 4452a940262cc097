"""A synthetic world of coloured shapes, and scores for images generated or edited in it."""

from videdit.toy.world import (
    BACKGROUND_COLOURS,
    CAPTION_WORDS,
    CLIP_KINDS,
    OBJECT_COLOURS,
    SHAPES,
    Clip,
    Motion,
    Scene,
    WorldConfig,
    WorldObject,
    caption_for,
    make_scene,
    render_clip,
    sample_clip,
    sample_scene,
    sample_scenes,
)

__all__ = [
    "BACKGROUND_COLOURS",
    "CAPTION_WORDS",
    "CLIP_KINDS",
    "OBJECT_COLOURS",
    "SHAPES",
    "Clip",
    "Motion",
    "Scene",
    "WorldConfig",
    "WorldObject",
    "caption_for",
    "make_scene",
    "render_clip",
    "sample_clip",
    "sample_scene",
    "sample_scenes",
]
