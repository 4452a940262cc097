"""videdit: text-guided image and video editing with diffusion models.

    import videdit
    videdit.edit_video("clip.mp4", "out.mp4", source_prompt="a red circle ...", target_prompt="a blue circle ...")

The heavy parts (torch, diffusers) load on first use, so ``import videdit`` and
``videdit --help`` stay quick.
"""

from importlib import import_module

from videdit.errors import VideditError

_LAZY = {
    "EditResult": "videdit.pipeline", "EditSettings": "videdit.pipeline", "edit_image": "videdit.pipeline",
    "edit_video": "videdit.pipeline", "invert_video": "videdit.pipeline",
    "Model": "videdit.models", "load_model": "videdit.models", "ControlSpec": "videdit.control",
    "edit_batch": "videdit.batch", "ReadOptions": "videdit.io",
}

__all__ = ["VideditError", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'videdit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
