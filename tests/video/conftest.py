import pytest

from videdit import io


@pytest.fixture(scope="module")
def clip(shared_data):
    """8 frames of the wolf clip at 64x64."""
    frames, _ = io.read_clip(shared_data / "videos" / "wolf.mp4", io.ReadOptions(size=(64, 64), max_frames=8))
    return frames
