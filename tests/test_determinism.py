"""Same inputs, same settings, same bits: what videdit guarantees, and the thread count it needs.

CPU convolutions and matmuls sum in an order that depends on torch's intra-op thread count, so an
edit is bit-identical for the same count (and the same inversion cache contents), not across counts.
PyTorch keeps the count per OS thread once a thread has run an op; `videdit serve` runs its edits in
Gradio's pool threads, so each run sets the count the server started with (serve.torch_threads)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from videdit import io, serve
from videdit.errors import VideditError

RED = "a red circle on a gray background"
BLUE = "a blue circle on a gray background"


@pytest.fixture
def two_counts():
    """A pool thread that ran an op at 2 threads, then the main thread at 1 (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    pool = ThreadPoolExecutor(1)
    assert pool.submit(lambda: (torch.ones(4) @ torch.ones(4), torch.get_num_threads())[1]).result() == 2
    torch.set_num_threads(1)
    assert pool.submit(torch.get_num_threads).result() == 2   # torch's count is the pool thread's own
    try:
        yield pool
    finally:
        pool.shutdown()
        torch.set_num_threads(before)


def test_server_runs_at_its_own_thread_count_in_any_thread(two_counts, tmp_path, monkeypatch):
    import videdit.pipeline

    server = serve.Server("toy", root=tmp_path / "server")   # made at 1 thread
    server.model = object()   # never used: the edit stops at once
    assert server.threads == 1
    clip, _ = server.sample()
    seen = []

    def edit_video(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise VideditError("stop")

    monkeypatch.setattr(videdit.pipeline, "edit_video", edit_video)
    with pytest.raises(VideditError, match="stop"):
        two_counts.submit(server.run, clip, serve.PageSettings(source=RED, target=BLUE, steps=2)).result()
    assert seen == [1]   # a pool thread at 2 before
    server.close()


def test_same_count_in_another_thread_gives_the_same_bits(two_counts):
    from videdit.models import load_model

    toy_model = load_model("toy", device="cpu")
    frames = io.read_clip(serve.SAMPLE)[0][:4]

    def encode():
        with torch.no_grad():
            return toy_model.encode_images(frames, 4)

    main = encode()
    pinned = two_counts.submit(lambda: (serve.torch_threads(1), encode())[1]).result()
    assert torch.equal(main, pinned)


@pytest.mark.slow
def test_recolour_sample_is_bit_identical_at_one_count(tmp_path):
    """The recolour preset on the sample at 4 steps: a main-thread and a pool-thread run at the same
    count give the same frames (at different counts, 7 uint8 values differ by 1; ~20 s)."""
    import yaml

    from videdit.pipeline import edit_video

    config = yaml.safe_load((serve.ROOT / "configs" / "recolour.yaml").read_text())
    config.update(steps=4)
    before = torch.get_num_threads()
    pool = ThreadPoolExecutor(1)

    def run():
        torch.set_num_threads(1)
        return edit_video(serve.SAMPLE, source_prompt=RED, target_prompt=BLUE, model="toy", use_cache=False,
                          **config).frames

    try:
        main, other = run(), pool.submit(run).result()
    finally:
        pool.shutdown()
        torch.set_num_threads(before)
    assert main.shape == (24, 64, 64, 3) and np.array_equal(main, other)
