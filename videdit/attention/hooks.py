"""``with module_hooks(unet, {pattern: hook}): ...``: forward hooks on the modules whose
names (``unet.named_modules()``, e.g. ``up_blocks.1.resnets.1.conv2``) match a glob, for
the duration of a ``with`` block; removed in ``finally``. Editors that inject features
(Plug-and-Play's decoder residuals) use it; attention goes through processors instead."""

from __future__ import annotations

from contextlib import contextmanager
from fnmatch import fnmatchcase
from typing import Any, Callable, Iterator, Mapping

from videdit.attention.layers import expand_levels

# hook(module, args, output) -> new output, or None to keep it (torch's forward-hook contract)
ForwardHook = Callable[[Any, tuple, Any], Any]


def match_modules(unet, pattern: str) -> list[str]:
    """Module names of ``unet`` matching the glob ``pattern`` (a level by depth, ``up@0``,
    expanded: :func:`videdit.attention.layers.expand_levels`)."""
    globs = expand_levels(unet, [pattern])
    return [n for n, _ in unet.named_modules() if n and any(fnmatchcase(n, g) for g in globs)]


@contextmanager
def module_hooks(unet, hooks: Mapping[str, ForwardHook] | None) -> Iterator[dict[str, ForwardHook]]:
    """Register each ``hook`` on every module matching its glob and yield {module name: hook}.
    A pattern that matches nothing, or a module matched twice, is an error (nothing is
    registered then). Every hook is removed when the block exits, also on an exception."""
    if not hooks:
        yield {}
        return
    modules = dict(unet.named_modules())
    chosen: dict[str, ForwardHook] = {}
    for pattern, hook in hooks.items():
        names = match_modules(unet, pattern)
        if not names:
            raise ValueError(f"module pattern {pattern!r} matches no module; modules look like "
                             f"'up_blocks.1.resnets.1' (see unet.named_modules())")
        for name in names:
            if name in chosen:
                raise ValueError(f"module {name} matched twice ({pattern!r}); give one hook per module")
            chosen[name] = hook
    handles = []
    try:
        for name, hook in chosen.items():
            handles.append(modules[name].register_forward_hook(hook))
        yield chosen
    finally:
        for h in handles:
            h.remove()
