"""``with attention_processors(unet, plan): ...``: layers chosen by pattern over diffusers'
processor names (``up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor``), never
by index path; the originals are put back in ``finally``."""

from __future__ import annotations

from contextlib import contextmanager
from fnmatch import fnmatchcase
from typing import Any, Iterator, Mapping


def match_layers(names, pattern: str) -> list[str]:
    """Processor names matching a glob ``pattern`` (e.g. ``"*attn2*"``, ``"up_blocks.*attn1*"``)."""
    return [n for n in names if fnmatchcase(n, pattern)]


@contextmanager
def attention_processors(unet, plan: Mapping[str, Any] | None) -> Iterator[dict[str, Any]]:
    """Install ``plan`` (glob pattern or exact layer name -> processor) on ``unet`` and yield
    the installed {layer name: processor}. A layer matched by two patterns is an error:
    compose the modules into one processor instead."""
    originals = dict(unet.attn_processors)
    if not plan:
        yield {}
        return
    installed: dict[str, Any] = {}
    for pattern, proc in plan.items():
        names = match_layers(originals, pattern)
        if not names:
            raise ValueError(f"attention pattern {pattern!r} matches no layer; layers look like {next(iter(originals))!r}")
        for name in names:
            if name in installed:
                raise ValueError(f"layer {name} matched twice ({pattern!r}); compose processors per layer")
            installed[name] = proc
    try:
        unet.set_attn_processor({**originals, **installed})
        yield installed
    finally:
        unet.set_attn_processor(originals)
