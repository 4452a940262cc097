"""content_key: one sha256 over the salt, the array's shape, dtype and bytes, and the named parts."""

import hashlib
import json
from pathlib import Path

import numpy as np

from videdit.hashing import content_key

DATA = np.arange(6, dtype=np.float32).reshape(2, 3)


def test_key_is_the_documented_sha256():
    h = hashlib.sha256(b"s" + b"(2, 3)float32" + DATA.tobytes() + json.dumps({"a": 1}).encode())
    assert content_key(DATA, "s", a=1) == h.hexdigest() and len(h.hexdigest()) == 64


def test_key_changes_with_every_input_and_not_with_the_parts_order():
    base = content_key(DATA, "v1", steps=10, prompt="a cat")
    assert content_key(DATA.copy(), "v1", prompt="a cat", steps=10) == base       # order of the parts
    changed = [
        content_key(DATA, "v2", steps=10, prompt="a cat"),                         # salt
        content_key(DATA + np.float32(1e-6) * (DATA == 5), "v1", steps=10, prompt="a cat"),  # one value
        content_key(DATA.reshape(3, 2), "v1", steps=10, prompt="a cat"),           # shape, same bytes
        content_key(DATA.view(np.int32), "v1", steps=10, prompt="a cat"),          # dtype, same bytes
        content_key(DATA, "v1", steps=11, prompt="a cat"),                         # one part
        content_key(DATA, "v1", steps=10, prompt="a dog"),
        content_key(DATA, "v1", steps=10),                                         # a part left out
    ]
    assert len(set(changed)) == len(changed) and base not in changed


def test_a_strided_view_hashes_its_values():
    big = np.arange(12, dtype=np.float32).reshape(2, 6)
    assert content_key(big[:, ::2], "s") == content_key(np.ascontiguousarray(big[:, ::2]), "s")
    assert content_key(big[:, ::2], "s") != content_key(big[:, :3], "s")
    assert content_key(DATA, "s", path=Path("x")) == content_key(DATA, "s", path="x")  # str() for non-JSON
