import pytest

from videdit.toy.world import sample_scenes


@pytest.fixture(scope="module")
def scenes():
    """200 world scenes of seed 123."""
    return sample_scenes(123, 200)
