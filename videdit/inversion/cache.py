"""On-disk cache of inversions, keyed by a hash of frames, model, prompt and parameters.

An entry is one safetensors file whose metadata repeats the key; anything that does not
load, does not repeat the key, or has inconsistent shapes is reported and recomputed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from videdit.errors import VideditError
from videdit.hashing import content_key
from videdit.inversion.record import Inversion
from videdit.io.atomic import atomic_path

log = logging.getLogger("videdit.cache")
FORMAT = "videdit-inversion-4"  # salts every key and is checked on load: bump it when what an entry holds changes


def default_cache_dir() -> Path:
    return Path(os.environ.get("VIDEDIT_CACHE_DIR") or Path.home() / ".cache" / "videdit" / "inversions")


def cache_key(frames: np.ndarray, **parts) -> str:
    """The key of the inversion of ``frames`` with ``parts`` (model, prompts, method, options)."""
    return content_key(frames, FORMAT, **parts)


class InversionCache:
    def __init__(self, directory: Path | str | None = None):
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        if self.directory.exists() and not self.directory.is_dir():
            raise VideditError(f"the inversion cache {self.directory} is a file; give cache_dir (--cache-dir) a folder")

    def path(self, key: str) -> Path:
        return self.directory / f"{key[:32]}.safetensors"

    def load(self, key: str, n_steps: int) -> Inversion | None:
        """The cached inversion for ``key``, or None (missing, corrupt or mismatched)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
            traj = tensors.pop("trajectory")
            ok = (meta.get("key") == key and meta.get("format") == FORMAT and traj.ndim == 5
                  and traj.shape[0] == n_steps + 1 and bool(torch.isfinite(traj).all()))
            if not ok:
                raise ValueError("key, format or shape mismatch")
            extras = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
            return Inversion(method=meta["method"], trajectory=traj, extras=extras,
                             unet_evals=int(meta["unet_evals"]), evals_per_step=int(meta["evals_per_step"]),
                             start_step=int(meta["start_step"]), cached=True,
                             frame_axes=json.loads(meta["frame_axes"]))
        except Exception as e:  # corrupt file, truncated write by another tool, old format ...
            log.warning("ignoring bad inversion cache entry %s (%s); recomputing", path.name, e)
            return None

    def save(self, key: str, inv: Inversion) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        tensors = {"trajectory": inv.trajectory.detach().cpu().contiguous()}
        tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in inv.extras.items()})
        meta = {"key": key, "format": FORMAT, "method": inv.method, "unet_evals": str(inv.unet_evals),
                "evals_per_step": str(inv.evals_per_step), "start_step": str(inv.start_step),
                "frame_axes": json.dumps(inv.frame_axes)}
        path = self.path(key)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path
