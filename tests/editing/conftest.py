"""The editing tests' inversions of real frames on tiny-random, one per family of editors: a test file
names the one it uses ``inverted`` (the attention editors' or the blending editors')."""

import pytest

from tests.editing import attention_runs, blending_runs
from videdit.inversion import INVERSIONS
from videdit.pipeline import EditSettings, invert_frames, reconstruct


@pytest.fixture(scope="module")
def attention_inverted(tiny, wolf_frames):
    """(settings, inversion, reconstruction) of one frame: DDIM, guidance 7.5, 5 steps."""
    s = EditSettings(source_prompt=attention_runs.SOURCE, target_prompt=attention_runs.TARGET,
                     steps=attention_runs.STEPS, guidance=7.5)
    inv = invert_frames(tiny, wolf_frames[:1], s)
    return s, inv, reconstruct(tiny, inv, s)


@pytest.fixture(scope="module")
def blending_inverted(tiny, wolf_frames):
    """method -> (settings with target != source, inversion, reconstruction)."""
    cache = {}

    def get(method):
        if method not in INVERSIONS:
            pytest.skip(f"inversion {method!r} is not registered")
        if method not in cache:
            s = EditSettings(source_prompt=blending_runs.SOURCE, target_prompt=blending_runs.TARGET,
                             steps=blending_runs.STEPS, guidance=7.5, inversion=method)
            inv = invert_frames(tiny, wolf_frames, s)
            cache[method] = (s, inv, reconstruct(tiny, inv, s))
        return cache[method]

    return get
