"""The working size: the model's native short side by default, the source's size with
``--size source``, refused over the token budget before any work; the output keeps the source's size."""

from types import SimpleNamespace

import av
import cv2
import numpy as np
import pytest

from videdit import io
from videdit.cli import main
from videdit.errors import VideditError
from videdit.models.loading import Model
from videdit.pipeline import MAX_TOKENS_ENV, check_budget, edit_image, token_budget, working_size


def _config_model(sample_size: int, name: str = "sd") -> Model:
    """A Model whose UNet and VAE are only the configs working_size reads (SD's: a 4-block VAE, 8x)."""
    config = lambda **kw: SimpleNamespace(config=SimpleNamespace(**kw))  # noqa: E731
    return Model(name=name, unet=config(sample_size=sample_size), vae=config(block_out_channels=[128, 256, 512, 512]),
                 text_encoder=None, tokenizer=None, scheduler_config={}, fingerprint="")


@pytest.fixture(scope="module")
def hd_clip(tmp_path_factory, shared_data):
    """Two frames of a shared clip upscaled to 1920x1080, as an mp4 at 8 fps."""
    frames, _ = io.read_clip(shared_data / "videos" / "dog.mp4", io.ReadOptions(max_frames=2))
    path = tmp_path_factory.mktemp("hd") / "hd.mp4"
    io.write_video(path, [np.stack([cv2.resize(f, (1920, 1080), interpolation=cv2.INTER_CUBIC) for f in frames])], 8)
    return path


def _shrunk(real, seen: list, factor: int = 8):
    """``edit_frames`` (``real``) on each window shrunk ``factor`` times per side and its result grown
    back: everything around it (working size, reading, summary, writing) runs as it does, without
    tiny-random's minute per frame at 912x512 on one CPU thread (its 7296-token self-attention);
    ``seen`` gets the shape of each window it was given."""
    def run(model, frames, *args, **kwargs):
        seen.append(frames.shape)
        h, w = frames.shape[1:3]
        small = np.stack([cv2.resize(f, (max(8, w // factor), max(8, h // factor)), interpolation=cv2.INTER_AREA)
                          for f in frames])
        return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_CUBIC) for f in real(model, small, *args,
                                                                                              **kwargs)])
    return run


@pytest.mark.parametrize("sample_size, native, work", [(64, 512, (912, 512)),      # SD 1.x: 910.2 -> 912
                                                       (96, 768, (1368, 768)),     # SD 2.x (v): 1365.3 -> 1368
                                                       (128, 1024, (1824, 1024))])  # SDXL: 1820.4 -> 1824
def test_native_size_comes_from_the_unet_config(sample_size, native, work):
    model = _config_model(sample_size)
    assert model.native_size == native
    assert working_size(model, (1920, 1080), None) == work and working_size(model, (1080, 1920), None) == work[::-1]
    assert working_size(model, (1920, 1080), "source") == (1920, 1080)
    assert working_size(model, (1920, 1080), 256) == (456, 256)
    assert working_size(model, (1920, 1080), (99, 70)) == (96, 72)
    assert check_budget(model, (1920, 1080), None) == work   # the default always fits the default budget


def test_budget_is_stated_and_overridable(monkeypatch):
    sd, sdxl = _config_model(64), _config_model(128)
    assert (sd.token_budget, sdxl.token_budget) == (16384, 65536)
    with pytest.raises(VideditError) as e:
        check_budget(sd, (1920, 1080), "source")
    message = str(e.value)
    assert "\n" not in message and "1920x1080 is 240x135 = 32400 latent tokens per frame" in message
    assert "over the budget of 16384; use --size 760 or less" in message and "--max-tokens 32400" in message
    assert "3.9 GiB per head per frame in float32" in message   # 32400^2 x 4 bytes
    assert check_budget(sd, (1920, 1080), 760) == (1352, 760)    # 169 x 95 = 16055 tokens: the --size it names fits
    assert check_budget(sd, (1920, 1080), "source", max_tokens=32400) == (1920, 1080)
    monkeypatch.setenv(MAX_TOKENS_ENV, "40000")
    assert token_budget(sd) == 40000 and check_budget(sd, (1920, 1080), "source") == (1920, 1080)
    assert token_budget(sd, 100) == 100
    monkeypatch.setenv(MAX_TOKENS_ENV, "lots")
    with pytest.raises(VideditError, match="VIDEDIT_MAX_TOKENS='lots' is not a whole number"):
        token_budget(sd)
    with pytest.raises(VideditError, match="max_tokens must be a whole number of latent tokens per frame >= 1"):
        token_budget(sd, 0)


def _edit_hd_clip(hd_clip, out, capsys) -> str:
    """Issue 16's check: ``videdit edit`` of a 1920x1080 clip with tiny-random, which has SD 1.5's
    geometry: it works at 512 short side and writes 1920x1080 frames. Returns the run summary."""
    code = main(["edit", str(hd_clip), "-t", "a cat", "-o", str(out), "--model", "tiny-random", "--steps", "1",
                 "--no-cache", "-q"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    # tiny-random's native short side is SD 1.5's 64 x 8 = 512: 1920 x 512 / 1080 = 910.2 -> 912 (a multiple of 8)
    assert "(2 frames, worked at 912x512, written at 1920x1080;" in stdout
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert (v.width, v.height) == (1920, 1080) and sum(1 for _ in c.decode(v)) == 2
    return stdout


def test_hd_clip_works_at_the_native_size_and_writes_the_source_size(hd_clip, tmp_path, capsys, monkeypatch):
    """The CLI run with the model's own work on each window done at 1/8 of the working size (the
    slow test below runs it whole)."""
    from videdit import pipeline

    seen = []
    monkeypatch.setattr(pipeline, "edit_frames", _shrunk(pipeline.edit_frames, seen))
    _edit_hd_clip(hd_clip, tmp_path / "out.mp4", capsys)
    assert seen == [(2, 512, 910, 3)]   # read at 910x512, the model's multiple of 8 (912) taken in edit_frames


@pytest.mark.slow
def test_hd_clip_edit_at_the_native_size_runs_whole(hd_clip, tmp_path, capsys):
    """The same edit with nothing replaced: tiny-random's UNet and VAE at 912x512 (about 70 s)."""
    _edit_hd_clip(hd_clip, tmp_path / "out.mp4", capsys)


def test_hd_clip_at_source_size_is_refused_before_any_work(hd_clip, tmp_path, capsys, monkeypatch):
    from videdit import pipeline

    monkeypatch.setattr(pipeline, "edit_frames", lambda *a, **k: pytest.fail("edited although refused"))
    out = tmp_path / "out.mp4"
    code = main(["edit", str(hd_clip), "-t", "a cat", "-o", str(out), "--model", "tiny-random", "--steps", "1",
                 "--no-cache", "-q", "--size", "source"])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and not out.exists()
    assert "1920x1080 is 240x135 = 32400 latent tokens per frame" in err   # the figure it would need
    assert "over the budget of 16384; use --size 760 or less" in err and "--max-tokens 32400" in err   # the fixes
    assert "tiny-random's native short side is 512" in err


def test_invert_and_edit_share_the_working_frames(shared_data, tmp_path, capsys):
    """The default size is the same for invert and edit (the cache hits); another --size is other
    frames, so another inversion. On the toy model (native short side 16 x 4 = 64): tiny-random's
    default, 512, costs a minute here, and the default comes from the model alike."""
    clip = shared_data / "videos" / "dog.mp4"
    common = ["--model", "toy", "--steps", "2", "--max-frames", "2", "--cache-dir", str(tmp_path / "c"), "-q"]
    assert main(["invert", str(clip), *common]) == 0
    assert "inverted 2 frames at 64x64 in 1 window (0 already cached)" in capsys.readouterr().out
    assert main(["edit", str(clip), *common, "-t", "x", "-o", str(tmp_path / "a.mp4")]) == 0
    assert "worked at 64x64, written at 512x512; inversion" in (out := capsys.readouterr().out)
    assert "1/1 windows from cache" in out
    assert main(["edit", str(clip), *common, "-t", "x", "-o", str(tmp_path / "b.mp4"), "--size", "32"]) == 0
    assert "0/1 windows from cache" in capsys.readouterr().out


def test_edit_image_works_at_the_native_size(tiny, monkeypatch):
    from videdit import pipeline

    seen = []
    monkeypatch.setattr(pipeline, "edit_frames", _shrunk(pipeline.edit_frames, seen))
    image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    out = edit_image(image, target_prompt="x", model=tiny, steps=1, use_cache=False)
    source = edit_image(image, target_prompt="x", model=tiny, steps=1, use_cache=False, size="source")
    assert out.shape == source.shape == (300, 400, 3) and seen == [(1, 512, 683, 3), (1, 300, 400, 3)]


def test_budget_is_checked_from_the_configs_before_the_weights_load(tmp_path, monkeypatch):
    """A diffusers directory whose weight files are missing: the refusal comes from its configs
    alone, before load_model would fail on the weights; the same for a hub id in the cache."""
    import json

    from videdit.models import loading

    for part, config in (("unet", {"sample_size": 64}), ("vae", {"block_out_channels": [128, 256, 512, 512]})):
        (tmp_path / part).mkdir()
        (tmp_path / part / "config.json").write_text(json.dumps(config))
    geometry = loading.peek_geometry(tmp_path)
    assert (geometry.native_size, geometry.vae_scale_factor, geometry.token_budget) == (512, 8, 16384)
    image = np.zeros((1080, 1920, 3), np.uint8)
    with pytest.raises(VideditError, match="240x135 = 32400 latent tokens per frame .* use --size 760 or less"):
        edit_image(image, model=str(tmp_path), size="source", target_prompt="a cat")
    assert loading.peek_geometry("tiny-random") is None and loading.peek_geometry("no/such-model-here") is None
