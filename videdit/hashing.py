"""Keys of the on-disk caches (inversions, optical flow): one sha256 over arrays' bytes,
shapes and dtypes and over named parts as sorted JSON, salted with the cache's format so a
new format never reads an old entry."""

from __future__ import annotations

import hashlib
import json

import numpy as np


def content_key(data: np.ndarray, salt: str, **parts) -> str:
    """sha256 (hex) of ``salt``, ``data`` (its shape, dtype and bytes) and ``parts`` (JSON,
    sorted keys; values JSON does not know are written with ``str``)."""
    h = hashlib.sha256()
    h.update(salt.encode())
    h.update(str(data.shape).encode() + str(data.dtype).encode())
    h.update(np.ascontiguousarray(data).data)
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()
