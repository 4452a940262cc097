"""``--compile``, ``--channels-last`` and ``--vae-dtype``: the same edit within float rounding,
compiled once per shape (not per step or per edit), the compile time reported apart.
tiny-random with two real frames at 64x64; the VAE's bf16 error on the toy model's scenes."""

import warnings

import numpy as np
import pytest
import torch

from tests.inversion.exact_runs import rel_error
from videdit.models import load_model
from videdit.models.speed import accelerate, compiled_parts
from videdit.pipeline import EditSettings, EditStats, edit_frames, edit_latents, invert_frames


def settings(editor: str = "prompt_to_prompt", steps: int = 3, **kw) -> EditSettings:
    return EditSettings(source_prompt="a wolf", target_prompt="a fox", steps=steps, guidance=7.5, editor=editor,
                        batch_size=2, **kw)


def edited(model, frames, s) -> torch.Tensor:
    return edit_latents(model, invert_frames(model, frames, s), s)


@pytest.fixture(scope="module")
def compiled():
    """tiny-random with dynamo in front of the compiled parts (its ``eager`` backend: the wiring,
    the graphs and their reuse, without inductor's minutes of code generation on this CPU)."""
    model = load_model("tiny-random")
    accelerate(model, compile=True, backend="eager")
    yield model
    torch._dynamo.reset()


@pytest.mark.parametrize("kw", [{"editor": "prompt_to_prompt"}, pytest.param(
    {"editor": "plug_and_play", "temporal": {"tokenflow": {}}, "feature_cache": 3}, marks=pytest.mark.slow)],
                         ids=["p2p", "tokenflow with deepcache"])   # slow: the suite was at its 10-minute bound
def test_compiled_parts_give_the_same_edit(tiny, compiled, wolf_frames, kw):
    """Attention processors, TokenFlow's ``norm1`` hook and DeepCache's shallow calls stay eager
    around the compiled forwards (Plug-and-Play's feature hook: the next test). Measured relative
    difference of the edited latents: 6.2e-6 (p2p), about 6e-6 (tokenflow with deepcache): float
    rounding."""
    s = settings(**kw)
    assert rel_error(edited(compiled, wolf_frames, s), edited(tiny, wolf_frames, s)) <= 2e-5


def test_a_hook_inside_a_compiled_block_is_not_lost(tiny, wolf_frames):
    """Plug-and-Play's feature hook sits on a residual block's ``conv2``: after prompt-to-prompt
    (source pinned: the same 3 rows a frame) compiled that block without it, the PnP edit still
    injects (the block runs eager while a submodule has hooks): the eager model's edit within
    float rounding (measured 5.5e-6), far from the edit without injection (0.55)."""
    model = load_model("tiny-random")
    accelerate(model, compile=True, backend="eager")
    try:
        edited(model, wolf_frames, settings("prompt_to_prompt", source_branch="pinned"))
        s = settings("plug_and_play")
        z, ref = edited(model, wolf_frames, s), edited(tiny, wolf_frames, s)
        assert rel_error(z, ref) <= 2e-5
        no_injection = settings("plug_and_play", editor_params={"feature_fraction": 0.0})
        assert rel_error(edited(tiny, wolf_frames, no_injection), ref) > 1e-3
    finally:
        torch._dynamo.reset()


def test_graphs_compile_once_per_shape_and_the_time_is_apart(compiled, wolf_frames):
    """More steps and a second edit at the same shapes compile nothing; the first edit's compile
    time is reported in ``seconds['compile']`` and kept out of its inversion and edit times."""
    clock = compiled.compile_clock
    parts = compiled_parts(compiled)
    assert len(clock.compiled) == len(parts) == 24   # 11 resnets, 2 + 2 samplers, 7 feed-forwards; VAE 2
    assert accelerate(compiled, compile=True, backend="eager") is clock   # once per model
    s = settings("prompt_to_prompt", steps=2)
    first = EditStats()
    edit_frames(compiled, wolf_frames[:1], s, stats=first)   # one frame: shapes no earlier test met
    graphs = clock.graphs
    assert graphs > 0 and first.seconds["compile"] > 0
    again = EditStats()
    edit_frames(compiled, wolf_frames[:1], settings("prompt_to_prompt", steps=6), stats=again)
    assert clock.graphs == graphs and again.seconds["compile"] == 0


def test_channels_last_gives_the_same_edit(tiny, wolf_frames):
    """Measured relative difference 6.3e-6."""
    fast = load_model("tiny-random", channels_last=True)
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    s = settings("prompt_to_prompt")
    assert rel_error(edited(fast, wolf_frames, s), edited(tiny, wolf_frames, s)) <= 2e-5


@pytest.mark.slow
def test_inductor_gives_the_same_edit(tiny, wolf_frames):
    """Inductor's C++ kernels on this CPU (160 s to compile tiny-random's 68 graphs the first time,
    seconds once torch's on-disk cache has them). Measured relative difference 7.2e-6."""
    model = load_model("tiny-random", compile=True)
    s = settings("prompt_to_prompt")
    try:
        assert rel_error(edited(model, wolf_frames, s), edited(tiny, wolf_frames, s)) <= 2e-5
    finally:
        torch._dynamo.reset()


def test_a_bf16_vae_on_the_toy_model_is_within_a_level():
    """32 toy scenes (64x64): decoding the same latents with the VAE in bf16 changes pixels by
    0.19 levels on average (max 3); the round trip's PSNR is the VAE's own (34.66 dB fp32,
    34.68 dB bf16). The latents change by 0.53% and the inversion cache keys the VAE's dtype."""
    from videdit.toy import sample_scene

    rng = np.random.default_rng(0)
    images = np.stack([sample_scene(rng).image for _ in range(32)])
    full, half = load_model("toy"), load_model("toy", vae_dtype="bf16")
    assert half.vae.dtype == torch.bfloat16 and half.unet.dtype == torch.float32
    z = full.encode_images(images)
    assert rel_error(half.encode_images(images), z) <= 0.01
    diff = np.abs(full.decode_latents(z).astype(int) - half.decode_latents(z))
    assert diff.mean() <= 0.3 and diff.max() <= 4


def test_vae_tiling_acts_only_on_frames_larger_than_the_vae_sample_size():
    """The toy VAE (sample size 64): a 64x64 frame is coded whole, the same to the bit; a 256x256
    mosaic of 16 scenes in 64-pixel tiles: other latents (relative 0.22) and pixels (mean 7.0
    levels) with the VAE's own round-trip quality (PSNR 27.03 dB whole, 27.13 dB tiled). What it
    saves: ``python tools/bench.py vae`` (a 512x512 decode: peak RSS rise 301 -> 35 MiB)."""
    from videdit.toy import sample_scene

    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng).image for _ in range(16)]
    mosaic = np.concatenate([np.concatenate(scenes[i * 4:(i + 1) * 4], 1) for i in range(4)], 0)[None]
    whole, tiled = load_model("toy"), load_model("toy", vae_tiling=True)
    small = scenes[0][None]
    assert np.array_equal(whole.decode_latents(whole.encode_images(small)),
                          tiled.decode_latents(tiled.encode_images(small)))
    z, zt = whole.encode_images(mosaic), tiled.encode_images(mosaic)
    assert 0.1 < rel_error(zt, z) < 0.4

    def psnr(x):
        return 10 * np.log10(255 ** 2 / np.mean((mosaic.astype(float) - x) ** 2))

    assert psnr(tiled.decode_latents(zt)) > psnr(whole.decode_latents(z)) - 0.5


def test_compiling_without_a_compiler_is_one_line(monkeypatch):
    import shutil

    from videdit.errors import VideditError

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(VideditError, match=r"^--compile on the CPU needs a C\+\+ compiler"):
        load_model("tiny-random", compile=True)


def test_cuda_graph_modes_reach_inductor_and_copy_outputs_only_on_a_gpu(tiny, monkeypatch):
    """``--compile reduce-overhead`` (CUDA graphs on a GPU) reaches ``torch.compile`` as inductor's mode
    for every compiled part, shapes fixed; outputs are copied only where CUDA graphs are recorded (a
    GPU: not here); a misspelt mode names the modes."""
    import shutil

    from videdit.errors import VideditError
    from videdit.models.speed import COMPILE_MODES, CompileClock, compile_mode

    assert (compile_mode(True), compile_mode(False), compile_mode("reduce-overhead")) == (
        "default", None, "reduce-overhead")
    assert set(COMPILE_MODES) <= set(torch._inductor.list_mode_options())
    with pytest.raises(VideditError, match=r"^unknown compile mode 'cudagraphs'; choose from default, .*reduce-"):
        load_model("tiny-random", compile="cudagraphs")
    calls, copies = [], []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or fn)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/g++")   # inductor's compiler check passes
    wrap = CompileClock.wrap
    monkeypatch.setattr(CompileClock, "wrap",
                        lambda self, part, fn, layout, copy_out=False: copies.append(copy_out) or fn)
    clock = accelerate(load_model("tiny-random"), compile="reduce-overhead")
    assert (clock.mode, len(calls), len(copies)) == ("reduce-overhead", 24, 24)
    assert all(kw == {"backend": "inductor", "dynamic": False, "mode": "reduce-overhead"} for kw in calls)
    assert not any(copies)   # the CPU: no CUDA graphs, nothing to copy
    x = torch.randn(1, 64, 8, 8)
    block = tiny.unet.down_blocks[0].resnets[0]
    copied = wrap(clock, block, lambda *a: a[0], torch.contiguous_format, copy_out=True)
    same = wrap(clock, block, lambda *a: a[0], torch.contiguous_format)
    assert same(x) is x and copied(x) is not x and torch.equal(copied(x), x)


@pytest.mark.parametrize("supported, warned", [(False, True), (True, False)])
def test_half_precision_on_a_cpu_without_its_instructions_is_said_to_be_slow(supported, warned, monkeypatch):
    """bf16 on a CPU without AVX512-BF16 or AMX runs emulated (the toy VAE's 256-px decode: 56 s
    against 0.5 s in fp32, `python tools/bench.py vae`): loading says so, in one line."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: supported, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_model("tiny-random", vae_dtype="bf16")
        load_model("tiny-random")   # fp32: never
    said = [str(w.message) for w in caught if "emulated" in str(w.message)]
    assert said == (["bf16 on this CPU, which has no instructions for it, runs emulated, tens of times slower than "
                     "fp32 (the toy VAE's 256-px decode in bf16: 56 s against 0.5 s, `python tools/bench.py vae`); "
                     "use fp32 on a CPU"] if warned else [])
