"""Shared fixtures: the real test clips in ../shared/data (never copied into the repo) and
the built-in tiny-random and tiny-sdxl models."""

import os
from pathlib import Path

import pytest
import torch

# ../shared/data beside the project root; VIDEDIT_SHARED_DATA names another place (e.g. from a git worktree)
SHARED_DATA = Path(os.environ.get("VIDEDIT_SHARED_DATA")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "data")

# Under pytest-xdist (`-n N`) the workers share the machine's cores: torch would give each of them all
# of them, and N processes of that many threads each only wait on one another.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data relative to the repo root (or $VIDEDIT_SHARED_DATA); skips the test when it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny():
    from videdit.models import load_model

    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="session")
def tiny_sdxl():
    from videdit.models import load_model

    return load_model("tiny-sdxl", device="cpu")


@pytest.fixture(scope="session")
def wolf_frames(shared_data):
    """Two real frames at 64x64 (tiny-random's latents of real footage have unit std)."""
    from videdit import io

    frames, _ = io.read_clip(shared_data / "videos" / "wolf.mp4", io.ReadOptions(size=(64, 64)))
    return frames[[0, 10]]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
