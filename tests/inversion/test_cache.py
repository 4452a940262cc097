import dataclasses
import logging

import numpy as np
import pytest
import torch

from tests.inversion.exact_runs import settings_for
from videdit.errors import VideditError
from videdit.inversion import Inversion, InversionCache
from videdit.inversion.cache import cache_key
from videdit.models import load_model
from videdit.pipeline import EditSettings, invert_frames


def count_unet_calls(unet):
    calls = []
    handle = unet.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_second_inversion_is_a_cache_hit(tiny, wolf_frames, tmp_path, caplog):
    cache = InversionCache(tmp_path)
    settings = EditSettings(source_prompt="a wolf", steps=5)
    first = invert_frames(tiny, wolf_frames, settings, cache=cache)
    assert not first.cached and len(list(tmp_path.glob("*.safetensors"))) == 1
    calls, handle = count_unet_calls(tiny.unet)
    try:
        with caplog.at_level(logging.INFO, logger="videdit"):
            second = invert_frames(tiny, wolf_frames, settings, cache=cache)
    finally:
        handle.remove()
    assert second.cached and calls == []
    assert "inversion cache hit" in caplog.text
    torch.testing.assert_close(second.trajectory, first.trajectory)
    assert second.unet_evals == first.unet_evals == 5


@pytest.mark.parametrize("change", ["prompt", "steps", "frames", "method params"])
def test_key_changes_with_every_input(change):
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    base = dict(model="m", source="a", steps=5, config={"guidance": 1.0})
    changed = dict(base)
    if change == "prompt":
        changed["source"] = "b"
    elif change == "steps":
        changed["steps"] = 6
    elif change == "method params":
        changed["config"] = {"guidance": 2.0}
    other = frames.copy()
    if change == "frames":
        other[0, 0, 0, 0] = 1
    assert cache_key(frames, **base) != cache_key(other, **changed)


def _entry(tmp_path):
    cache = InversionCache(tmp_path)
    inv = Inversion(method="ddim", trajectory=torch.randn(6, 2, 4, 8, 8), unet_evals=5)
    key = "a" * 64
    return cache, key, cache.save(key, inv)


def test_corrupt_entry_is_recomputed_not_trusted(tmp_path, caplog):
    cache, key, path = _entry(tmp_path)
    assert cache.load(key, 5) is not None
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with caplog.at_level(logging.WARNING, logger="videdit.cache"):
        assert cache.load(key, 5) is None
    assert "ignoring bad inversion cache entry" in caplog.text


def test_mismatched_entry_is_rejected(tmp_path):
    cache, key, path = _entry(tmp_path)
    assert cache.load(key, 7) is None            # other step count
    other = "a" * 32 + "b" * 32                   # same file name, another key
    assert cache.path(other) == path and cache.load(other, 5) is None
    inv = Inversion(method="ddim", trajectory=torch.full((6, 1, 4, 2, 2), float("nan")))
    cache.save(key, inv)
    assert cache.load(key, 5) is None             # non-finite values


def test_corrupt_entry_end_to_end(tiny, wolf_frames, tmp_path):
    cache = InversionCache(tmp_path)
    settings = EditSettings(source_prompt="a wolf", steps=4)
    first = invert_frames(tiny, wolf_frames, settings, cache=cache)
    (entry,) = tmp_path.glob("*.safetensors")
    entry.write_bytes(b"garbage" * 10)
    again = invert_frames(tiny, wolf_frames, settings, cache=cache)
    assert not again.cached
    torch.testing.assert_close(again.trajectory, first.trajectory)
    assert invert_frames(tiny, wolf_frames, settings, cache=cache).cached  # rewritten good


def test_inversion_dtype_is_part_of_the_cache_key(wolf_frames, tmp_path):
    cache = InversionCache(tmp_path)
    bf16 = load_model("tiny-random", dtype="bf16")
    s = dataclasses.replace(settings_for("ddpm"), steps=2)
    invert_frames(bf16, wolf_frames[:1], s, cache=cache)
    assert not invert_frames(bf16, wolf_frames[:1], dataclasses.replace(s, inversion_dtype="fp32"), cache=cache).cached
    fp32 = load_model("tiny-random")  # for an fp32 model both settings are the same inversion
    invert_frames(fp32, wolf_frames[:1], s, cache=cache)
    assert invert_frames(fp32, wolf_frames[:1], dataclasses.replace(s, inversion_dtype="fp32"), cache=cache).cached
    with pytest.raises(VideditError, match="inversion_dtype"):
        dataclasses.replace(s, inversion_dtype="fp64")
