"""keep_background: the source's pixels wherever the edit left the latents alone."""

import numpy as np
import pytest
import torch

from videdit.cli import main
from videdit.video.keep_background import KeepBackground, change_mask, composite, keep_background
from videdit.errors import VideditError
from videdit.pipeline import EditSettings


def latents_with_change(value: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    src = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    edit = src.clone()
    edit[0, :, 2:4, 2:4] += value          # frame 0: a 2x2 block changed
    edit[1, :, 5, 5] += 0.1 * value        # frame 1: one cell, a tenth as much
    return src, edit


def test_change_mask_is_where_the_latents_moved_relative_to_the_window_peak():
    src, edit = latents_with_change()
    m = change_mask(src, edit, KeepBackground(threshold=0.3, dilate=0))
    assert m.shape == (2, 1, 8, 8) and set(m.unique().tolist()) == {0.0, 1.0}
    assert int(m[0].sum()) == 4 and float(m[0, 0, 2:4, 2:4].min()) == 1
    assert int(m[1].sum()) == 0                     # 0.1 of the window's peak is under the threshold
    assert int(change_mask(src, edit, KeepBackground(threshold=0.05, dilate=0))[1].sum()) == 1
    assert int(change_mask(src, edit, KeepBackground(threshold=0.3, dilate=1))[0].sum()) == 16   # 4x4
    assert int(change_mask(src, src.clone()).sum()) == 0
    with pytest.raises(VideditError, match="both be"):
        change_mask(src, edit[:1])


def test_composite_is_the_source_outside_and_the_edit_inside():
    rng = np.random.default_rng(0)
    source, edited = (rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8) for _ in range(2))
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:5, 2:5] = 1                                   # latent cells 2-4 = pixels 16-39
    out = composite(source, edited, mask, feather=0.0)
    inside = np.zeros((64, 64), bool)
    inside[20:36, 20:36] = True                                # away from the bilinear edge
    assert np.array_equal(out[:, inside], edited[:, inside])
    far = np.ones((64, 64), bool)
    far[8:48, 8:48] = False
    assert np.array_equal(out[:, far], source[:, far])
    soft = composite(source, edited, mask, feather=1.0)        # a feathered edge reaches further out
    assert np.array_equal(soft[:, inside], edited[:, inside]) and not np.array_equal(soft[:, 12, 12], source[:, 12, 12])
    with pytest.raises(VideditError, match="differ in shape"):
        composite(source, edited[:, :32], mask)


def test_keep_background_end_to_end_restores_untouched_frames_exactly():
    src, edit = latents_with_change()
    frames = np.full((2, 64, 64, 3), 100, np.uint8)
    decoded = np.full((2, 64, 64, 3), 107, np.uint8)   # a decoder that shifted everything by 7 levels
    out = keep_background(frames, decoded, src, edit, KeepBackground(threshold=0.3, dilate=0, feather=0))
    assert np.array_equal(out[1], frames[1])           # frame 1 barely changed: all source
    assert (out[0, 20:28, 20:28] == 107).all() and (out[0, :12] == 100).all()


@pytest.mark.parametrize("bad,match", [({"threshold": 0}, "threshold"), ({"threshold": 1.5}, "threshold"),
                                       ({"dilate": -1}, "dilate"), ({"feather": 9}, "feather"),
                                       ({"radius": 2}, "does not take radius")])
def test_bad_keep_background_options_are_errors(bad, match):
    with pytest.raises(VideditError, match=match):
        EditSettings(keep_background=bad)


def test_cli_keep_background_flag(tmp_path, shared_data, capsys, monkeypatch):
    import videdit.pipeline

    seen = []

    def fake_edit(*args, **kwargs):
        seen.append(kwargs)
        raise VideditError("stop")

    monkeypatch.setattr(videdit.pipeline, "edit_video", fake_edit)
    base = ["edit", str(shared_data / "videos" / "dog.mp4"), "-t", "x", "-o", str(tmp_path / "o.mp4")]
    for extra in ([], ["--keep-background"], ["--keep-background", "0.2"], ["--inversion-dtype", "fp32"]):
        assert main(base + extra) == 2
    assert [s["keep_background"] for s in seen] == [None, {}, {"threshold": 0.2}, None]
    assert seen[3]["inversion_dtype"] == "fp32" and seen[0]["inversion_dtype"] == "model"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("keep_background: true\n")
    assert main(base + ["--config", str(cfg)]) == 2 and seen[-1]["keep_background"] == {}
    capsys.readouterr()
