"""videdit.core.deepcache: DeepCache's shallow steps. tiny-random (SD 1.x blocks, one resnet in its
first down block: branches 0-1) and tiny-sdxl (a first block without attention), 64x64 frames."""

import dataclasses

import pytest
import torch

from tests.inversion.exact_runs import rel_error
from videdit.control import Control, ControlSpec
from videdit.core.conditioning import UnetCall, model_call
from videdit.core.deepcache import FeatureCaching, _shallow, _whole, feature_caching
from videdit.core.loop import CallInfo
from videdit.errors import VideditError
from videdit.pipeline import EditSettings, edit_latents, invert_frames


def one_call(model, batch: int = 2):
    torch.manual_seed(0)
    x = torch.randn(batch, 4, 8, 8)
    text = model.encode_text(["a wolf", "a fox"][:batch])
    info = CallInfo(n_branches=batch, frames=(0,))
    return model_call(model.unet, UnetCall(sample=x, timestep=torch.full((batch,), 500), text=text, info=info))


@pytest.mark.parametrize("name,branch", [("tiny", 0), ("tiny", 1), ("tiny_sdxl", 0), ("tiny_sdxl", 1)])
def test_the_shallow_path_on_the_state_it_kept_is_the_whole_unet(request, name, branch):
    """With the state kept from the same call, the shallow path (conv_in, the first down block's
    first ``branch`` layers, the last up block's last ``branch + 1`` layers, the head) gives the
    whole UNet's output: the modules it runs are the whole UNet's, in its order (measured max abs
    difference 0 on both)."""
    model = request.getfixturevalue(name)
    call = one_call(model)
    with torch.no_grad():
        whole, kept = _whole(model.unet, call, branch)
        assert torch.equal(whole, model.unet(call.sample, call.timestep, encoder_hidden_states=call.text,
                                             **call.kwargs).sample)
        shallow = _shallow(model.unet, call, kept, branch)
    assert (shallow - whole).abs().max() <= 1e-5


def test_steps_between_run_the_shallow_path(tiny, wolf_frames):
    """10 steps at interval 3: the whole UNet at steps 0, 3, 6, 9 (4 calls, one frame batch), the
    shallow path at the other 6; interval 1 is the edit without caching, to the bit; interval 3
    changes it (measured relative difference 0.45: tiny-random's deep features are random)."""
    s = EditSettings(source_prompt="a wolf", target_prompt="a fox", steps=10, editor="prompt_to_prompt")
    inv = invert_frames(tiny, wolf_frames, s)
    plain = edit_latents(tiny, inv, s)
    mids = []
    handle = tiny.unet.mid_block.register_forward_hook(lambda *a: mids.append(1))
    try:
        cached = edit_latents(tiny, inv, dataclasses.replace(s, feature_cache={"interval": 3}))
    finally:
        handle.remove()
    assert len(mids) == 4
    every = edit_latents(tiny, inv, dataclasses.replace(s, feature_cache={"interval": 1}))
    assert torch.equal(every, plain)
    assert rel_error(cached, plain) > 1e-2


def test_counts_and_refusals(tiny, wolf_frames):
    with feature_caching(tiny.unet, FeatureCaching(interval=2)) as cache:
        call = one_call(tiny)
        for step in range(4):
            call.info.step = step
            with torch.no_grad():
                cache.forward(tiny.unet, call)
        assert (cache.full, cache.shallow) == (2, 2)
        with pytest.raises(VideditError, match="already on"):
            with feature_caching(tiny.unet, FeatureCaching()):
                pass
    with pytest.raises(VideditError, match=r"^deepcache branch 2 is past this UNet's first block \(branches 0-1\)$"):
        with feature_caching(tiny.unet, FeatureCaching(branch=2)):
            pass
    with pytest.raises(VideditError, match="deepcache interval must be a whole number >= 1, got 0"):
        EditSettings(feature_cache={"interval": 0})
    s = EditSettings(source_prompt="a wolf", target_prompt="a fox", steps=2, feature_cache=3)
    control = Control([ControlSpec("canny", "tiny-random")], tiny)
    conditions = control.window(0, wolf_frames)
    inv = invert_frames(tiny, wolf_frames, s, control=conditions)
    with pytest.raises(VideditError, match="^deepcache skips the down blocks a ControlNet adds its residuals to"):
        edit_latents(tiny, inv, s, control=conditions)


def test_cli_deepcache_and_a_config_mapping_reach_the_edit(tmp_path, capsys, monkeypatch):
    """`--deepcache 3` reaches edit_video as its feature_cache; a config's `deepcache:` mapping sets
    the branch; a bad one is one line naming the option; a batch job's `deepcache:` too."""
    import videdit.pipeline
    from tests.test_cli import BASE, SAMPLE, run
    from videdit.batch import ALIASES
    from videdit.cli import _with_config, build_parser
    from videdit.pipeline import _settings

    seen = []

    def edit_video(*args, feature_cache=None, **kw):
        seen.append(feature_cache)
        raise VideditError("stop here")

    monkeypatch.setattr(videdit.pipeline, "edit_video", edit_video)
    code, _, err = run(capsys, "edit", SAMPLE, "-t", "a blue circle", "-o", tmp_path / "o.mp4", *BASE,
                       "--deepcache", 3)
    assert code == 2 and "stop here" in err and seen == [3]
    monkeypatch.undo()
    cfg = tmp_path / "dc.yaml"
    cfg.write_text("inversion: ddim\neditor: plain\ndeepcache: {interval: 5, branch: 1}\n")
    a = _with_config(build_parser(), ["edit", "in.mp4", "-t", "x", "-o", "o.mp4", "--config", str(cfg)])
    assert _settings(feature_cache=a.deepcache).feature_cache_config == FeatureCaching(interval=5, branch=1)
    cfg.write_text("deepcache: {interval: 5, layer: 2}\n")
    code, _, err = run(capsys, "edit", SAMPLE, "-t", "x", "-o", tmp_path / "p.mp4", *BASE, "--config", cfg)
    assert code == 2 and "deepcache does not take layer" in err
    assert ALIASES["deepcache"] == "feature_cache"


def test_it_runs_under_cross_frame_attention(tiny, wolf_frames):
    """A temporal module's attention on the layers a shallow step runs (cross-frame attention to the
    first frame): the edit runs, and differs from the one without caching."""
    s = EditSettings(source_prompt="a wolf", target_prompt="a fox", steps=4, editor="prompt_to_prompt",
                     temporal={"cross_frame": {"mode": "first"}})
    inv = invert_frames(tiny, wolf_frames, s)
    cached = edit_latents(tiny, inv, dataclasses.replace(s, feature_cache=3))
    assert torch.isfinite(cached).all() and rel_error(cached, edit_latents(tiny, inv, s)) > 1e-3
