"""Phone clips: stored landscape with a display rotation (90/180/270, as phones write them), edited
as they display and written so that they display the same way (no rotation tag, frames turned)."""

import av
import numpy as np
import pytest
from PIL import Image

from videdit import io
from videdit.cli import main

STORED = (96, 32)   # (W, H) as stored; displayed 32x96 (portrait) at 90 and 270


def _stored_frame(i: int) -> np.ndarray:
    """(32, 96, 3): a white band at the stored left edge, a grey ramp along x, and the frame's index."""
    frame = np.zeros((STORED[1], STORED[0], 3), np.uint8)
    frame[:, :, 1] = np.linspace(0, 160, STORED[0], dtype=np.uint8)[None]
    frame[:, :12] = 255
    frame[:, -12:, 2] = 40 * i
    return frame


def _phone_clip(path, rotation: int, n: int = 3):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = *STORED, "yuv420p"
        stream.options = {"crf": "0"}
        stream.set_display_rotation(rotation)  # counter-clockwise degrees, as the display matrix says
        for i in range(n):
            vf = av.VideoFrame.from_ndarray(_stored_frame(i), format="rgb24")
            vf.pts = i
            container.mux(stream.encode(vf))
        container.mux(stream.encode(None))
    return path


def _displayed(rotation: int, i: int) -> np.ndarray:
    return np.rot90(_stored_frame(i), k=rotation // 90)   # counter-clockwise, as a player turns it


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_phone_clip_is_edited_as_displayed_and_written_to_display_the_same(rotation, tmp_path, monkeypatch):
    """With the edit an identity, the output's frames are the displayed frames, in an upright
    stream (no rotation of its own); the preview GIF is in the displayed orientation too."""
    from videdit import pipeline

    seen = []
    monkeypatch.setattr(pipeline, "edit_frames", lambda model, frames, *a, **k: seen.append(frames.shape) or frames)
    clip = _phone_clip(tmp_path / f"phone{rotation}.mp4", rotation)
    out, gif = tmp_path / "out.mp4", tmp_path / "preview.gif"
    res = pipeline.edit_video(clip, out, target_prompt="x", model="tiny-random", use_cache=False, preview=gif,
                              read=io.ReadOptions(size="source"))
    shown = (32, 96) if rotation % 180 else (96, 32)   # (W, H) as displayed
    assert res.info.source_size == shown and res.info.n_frames == 3
    assert seen == [(3, shown[1], shown[0], 3)]   # the edit saw upright frames
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        frames = [f for f in c.decode(v)]
        assert (v.width, v.height) == shown and len(frames) == 3
        assert all((f.rotation or 0) == 0 for f in frames)   # displays as stored: upright
        for i, f in enumerate(frames):
            err = np.abs(f.to_ndarray(format="rgb24").astype(int) - _displayed(rotation, i)).mean()
            assert err < 6, (i, err)   # H.264 rounding; a frame turned the wrong way is off by 60-66
    with Image.open(gif) as g:
        assert (g.height > g.width) == (rotation % 180 != 0)   # source|edit side by side, each as displayed


def test_phone_clip_edit_keeps_count_and_displayed_size(tmp_path, capsys):
    clip = _phone_clip(tmp_path / "phone.mp4", 90, n=4)
    out = tmp_path / "out.mp4"
    code = main(["edit", str(clip), "-t", "a cat", "-o", str(out), "--model", "tiny-random", "--steps", "2",
                 "--no-cache", "-q", "--size", "128"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    # displayed 32x96: short side 128 -> 128x384
    assert "(4 frames, worked at 128x384, written at 32x96;" in stdout
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert (v.width, v.height) == (32, 96) and sum(1 for _ in c.decode(v)) == 4
