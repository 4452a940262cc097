"""The GPU check, in one run: correctness in fp16/bf16 and a timing table at SD1.5 size.

    python tools/gpu_check.py                      # on a GPU machine (tools/gpu_check.sh sets it up)
    python tools/gpu_check.py --arch tiny --size 64 --device cpu --steps 4 --frames 2   # smoke test here

The model is Stable Diffusion 1.5's *architecture* with random weights (``--arch sd15``: its
UNet, VAE and CLIP text encoder configs, a character tokenizer), saved as a diffusers
directory and loaded through ``load_model`` like any local model: no hub, and its images mean
nothing. What it measures is numerics and speed, which do not depend on trained weights.

Correctness, per dtype, on the shipped sample's frames at ``--size`` (10 steps, guidance 7.5):
relative latent reconstruction error of DDIM (guidance 1), EDICT, BDIA and direct inversion
(the exact ones must stay at 0), the UNet's output against fp32 on the same input, and the
largest difference between FateZero's stored attention copied to pinned memory on the GPU's
stream and copied waiting (``pinned maps``: 0 expected).

Timing (``--steps``, guidance 7.5): one UNet call at batch 2; invert + regenerate per frame
(videdit at 8 frames per UNet call against the same loop written with diffusers' own
DDIMInverseScheduler/DDIMScheduler, ``tools/bench.py loop``'s); prompt-to-prompt; a clip edited
with keyframes (flow, guided pixels; and bilateral pixels, only the keyframes through the
model); diffusers' LEDITS++, DiffEdit and pix2pix-zero pipelines beside videdit's same work
(``tools/bench.py peers``'s, 2 frames, with peak GPU memory); the video presets in configs/
(``PRESETS``, read as ``videdit edit --config`` reads them; Rerender's edge ControlNet replaced by a
random one of the model's architecture). Ratios are side by side in the same run.

Exactness: the same reconstruction errors at 10 and 50 steps on trained weights too (the
shipped toy model, 64x64), on the CPU and on the device, in fp32 (PyTorch's TF32 defaults:
cuDNN on, matmuls off), fp32 without TF32 ("fp32-strict"), fp16 and bf16; with whether the
UNet gives the same output for the same input twice, and for a frame alone against the same
frame inside a batch of 4; and, for direct inversion at 10 steps, how many of the replay's
UNet calls get an input (latents, timestep, text) the inversion gave the UNet, and how many
of those the same output. Random SD-size weights make a chaotic sampler (DDIM's own
reconstruction error is above 10 there), so any difference in the last bits of a UNet input
shows up: that is how the first H200 run found the source prompt embedded in batches of
different sizes while inverting and editing (EDICT 5.6, direct 17.5 instead of 0;
``Model.encode_text`` now embeds each prompt alone).

Speed (first dtype): prompt-to-prompt after direct (offsets in the edit) eager, with
``--channels-last``, with ``--compile`` too, and with ``--compile reduce-overhead`` (CUDA graphs):
the first run, the compiling in it, and the warm seconds per frame.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from videdit.metrics.work import SD15_UNET, SD15_VAE   # Stable Diffusion 1.5's UNet and VAE configs

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "red-circle.mp4"
PROMPT, TARGET = "a red circle", "a blue circle"
CONTROLNET = "controlnet"   # the ControlNet beside the model's parts (rerender's edge one in its place)
PRESETS = ("text2video-zero-ddim", "fatezero", "fatezero-replay", "tokenflow", "tokenflow-plus", "rerender",
           "rerender-pull", "recolour")

SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def make_model(arch: str, directory: Path) -> Path:
    """A diffusers Stable Diffusion directory: tiny-random's, or SD1.5's architecture, random weights (fp16)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from videdit.models import tiny

    if arch == "tiny":
        return tiny.save_tiny_random(directory)
    tokenizer = tiny.tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipe = StableDiffusionPipeline(
            unet=UNet2DConditionModel(**SD15_UNET), vae=AutoencoderKL(**SD15_VAE),
            text_encoder=CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **SD15_TEXT)), tokenizer=tokenizer,
            scheduler=DDIMScheduler.from_config(tiny.SD_SCHEDULER_CONFIG), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(directory)
    return directory


def save_controlnet(model_dir: Path) -> Path:
    """A ControlNet of the model's architecture beside its parts (``model_dir / CONTROLNET``): its UNet's
    encoder with its zero convolutions randomised, as tiny-random's (``random_controlnet``)."""
    from diffusers import UNet2DConditionModel

    from videdit.control.controlnet import random_controlnet

    net = random_controlnet(UNet2DConditionModel.from_pretrained(model_dir / "unet"), seed=0)
    net.to(torch.float16).save_pretrained(model_dir / CONTROLNET)
    return model_dir / CONTROLNET


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def correctness(model_dir: Path, args, frames: np.ndarray) -> dict:
    from videdit.models import load_model

    out, reference = {}, None
    for dtype in ("fp32", "fp16", "bf16"):
        model = load_model(model_dir, device=args.device, dtype=dtype)
        row = reconstruction_errors(model, frames, 10)
        with torch.no_grad():                      # one UNet call on the same input, against fp32's
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(2, 4, args.size // 8, args.size // 8, generator=gen).to(args.device, model.dtype)
            text = model.encode_text([PROMPT, ""])
            eps = model.unet(x, 500, encoder_hidden_states=text).sample.float().cpu()
        reference = eps if reference is None else reference
        row["unet vs fp32"] = float((eps - reference).norm() / reference.norm())
        row["pinned maps"] = stored_attention_transfer(model, frames)   # FateZero's queued copies: 0
        out[dtype] = row
    return out


def stored_attention_transfer(model, frames: np.ndarray) -> float:
    """FateZero's inversion (4 steps) with its stored maps copied to pinned host memory on the GPU's
    stream, against each copy waited for: the largest difference of a stored value (0 expected)."""
    from videdit.attention.stored import AttentionRecorder
    from videdit.pipeline import EditSettings, invert_frames

    s = EditSettings(source_prompt=PROMPT, target_prompt=TARGET, steps=4, inversion="fatezero", batch_size=2)
    stored = {}
    for queued in (True, False):
        AttentionRecorder.queue_copies = queued
        try:
            stored[queued] = invert_frames(model, frames, s).extras
        finally:
            AttentionRecorder.queue_copies = True
    return max(float((stored[True][k].float() - stored[False][k].float()).abs().max()) for k in stored[False])


def seconds(fn, device, repeat: int = 1, warm: bool = True) -> float:
    """Median wall seconds of ``fn()`` (after one warm-up call unless ``warm`` is False)."""
    if warm:
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def timing(model_dir: Path, args) -> dict:
    import bench   # tools/bench.py, beside this script (its folder is on sys.path when run as a script)

    from videdit.models import load_model
    from videdit.pipeline import EditSettings, edit_frames

    out = {}
    for dtype in args.dtypes:
        model = load_model(model_dir, device=args.device, dtype=dtype)
        row = {}
        with torch.no_grad():
            x = torch.randn(2, 4, args.size // 8, args.size // 8, device=args.device, dtype=model.dtype)
            text = model.encode_text([PROMPT, ""])
            unet_call = lambda: model.unet(x, 500, encoder_hidden_states=text)   # noqa: E731
            row["unet batch 2 (ms)"] = 1e3 * seconds(unet_call, args.device, repeat=10)
        frames = bench.load_frames(args.frames, args.size)
        row["diffusers loop (s/frame)"] = bench.diffusers_loop(model, frames, 8, args.steps, 7.5) / args.frames
        row["videdit plain (s/frame)"] = bench.videdit_loop(model, frames, 8, args.steps, 7.5) / args.frames
        s = EditSettings(source_prompt=PROMPT, target_prompt=TARGET, steps=args.steps, editor="prompt_to_prompt")
        p2p = seconds(lambda: edit_frames(model, frames, s), args.device, warm=False)  # the model is warm by now
        row["videdit p2p (s/frame)"] = p2p / args.frames
        s = EditSettings(source_prompt=PROMPT, target_prompt=TARGET, steps=args.steps, editor="prompt_to_prompt",
                         inversion="direct", inversion_params={"offsets": "in_edit"})   # issue 20's 0.5 s goal
        row["videdit p2p after direct, offsets in the edit (s/frame)"] = seconds(
            lambda: edit_frames(model, frames, s), args.device, warm=False) / args.frames
        s = dataclasses.replace(s, feature_cache=3)   # DeepCache at the helper's defaults
        row["the same with --deepcache 3 (s/frame)"] = seconds(
            lambda: edit_frames(model, frames, s), args.device, warm=False) / args.frames
        temporal = {"keyframes": {"every": 4}, "keyframe_flow": {}, "pixels_guided": {}}
        row.update(video_run("video keyframes+guided", model, args, editor="prompt_to_prompt", temporal=temporal,
                             steps=args.steps))
        temporal = {"keyframes": {"every": 4}, "pixels_bilateral": {}}   # the keyframes alone through the model
        row.update(video_run("video keyframes+bilateral", model, args, editor="prompt_to_prompt", temporal=temporal,
                             steps=args.steps))
        print(f"{dtype}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
        out[dtype] = row
    for dtype in args.dtypes[:1] if args.peers else ():   # diffusers' own pipelines for the same work, 2 frames
        model = load_model(model_dir, device=args.device, dtype=dtype)
        for task, name, ps, _, vs, _, pm, vm in bench.peer_rows(model_dir, model, bench.load_frames(2, args.size),
                                                                args.steps, repeats=1):
            row = {f"{task}: diffusers (s/frame)": ps / 2, f"{task}: videdit {name} (s/frame)": vs / 2,
                   f"{task}: diffusers peak (MiB)": pm, f"{task}: videdit peak (MiB)": vm}
            print(f"{dtype}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
            out[dtype].update(row)
    for dtype in args.dtypes[:1] if args.presets else ():  # the shipped presets, as `--config` runs them
        model = load_model(model_dir, device=args.device, dtype=dtype)
        for name in PRESETS:
            try:   # one preset's failure costs its row, not the table
                row = video_run(f"preset {name}", model, args, **preset_kwargs(name, str(model_dir / CONTROLNET)))
            except Exception as e:
                print(f"{dtype}: preset {name} failed: {type(e).__name__}: {e}", flush=True)
                out.setdefault("failed", {})[f"{dtype} preset {name}"] = f"{type(e).__name__}: {e}"
                continue
            print(f"{dtype}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
            out[dtype].update(row)
    return out


def preset_kwargs(name: str, controlnet: str) -> dict:
    """configs/NAME.yaml as `videdit edit --config` reads it, as ``edit_video``'s keywords less those
    :func:`video_run` sets (model, frames read, window, cache), each ControlNet it names replaced by
    ``controlnet`` (a directory) at its scale."""
    from videdit import cli

    args = cli._with_config(cli.build_parser(), ["edit", str(SAMPLE), "-o", "unused.mp4", "-s", PROMPT, "-t", TARGET,
                                                 "--config", str(ROOT / "configs" / f"{name}.yaml")])
    kw = cli.edit_kwargs(args)
    for key in ("model", "read", "window", "use_cache", "cache_dir", "preview", "overwrite", "progress", "device",
                "dtype"):
        del kw[key]
    kw["control"] = [dataclasses.replace(spec, controlnet=controlnet) for spec in kw["control"]]
    return kw


def speed(model_dir: Path, args) -> dict:
    """Prompt-to-prompt after ``direct`` (offsets in the edit) with ``--channels-last``, with
    ``--compile`` too and with ``--compile reduce-overhead`` (CUDA graphs), first dtype: seconds per
    frame once warm, and the compile time apart."""
    import bench

    frames = bench.load_frames(args.frames, args.size)
    out = {}
    for label, first_s, compiling, warm, again in bench.speed_runs(
            model_dir, frames, bench.speed_settings(args.steps, source=PROMPT, target=TARGET), device=args.device,
            dtype=args.dtypes[0], repeats=1,
            labels=("eager", "channels-last", "compile + channels-last", "CUDA graphs + channels-last")):
        out.update({f"{label}: first run (s)": first_s, f"{label}: of it compiling (s)": compiling,
                    f"{label}: warm (s/frame)": warm / args.frames, f"{label}: compiling again (s)": again})
        print(f"{label}: first run {first_s:.3f} s, of it compiling {compiling:.3f} s, warm {warm / args.frames:.3f} "
              f"s/frame, compiling again {again:.3f} s", flush=True)
    return out


def video_run(label: str, model, args, **settings) -> dict:
    """Seconds per frame (and peak GPU memory) of ``edit_video`` on the sample's first ``--frames`` frames."""
    from videdit import edit_video, io

    if torch.device(args.device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(args.device)
    t = time.perf_counter()
    settings = {"source_prompt": PROMPT, "target_prompt": TARGET, **settings}
    res = edit_video(SAMPLE, model=model, use_cache=False, window=args.frames, progress=False,
                     read=io.ReadOptions(size=args.size, max_frames=args.frames), **settings)
    sync(args.device)
    row = {f"{label} (s/frame)": (time.perf_counter() - t) / len(res.frames)}
    if torch.device(args.device).type == "cuda":
        row[f"{label} peak GPU (GB)"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return row


ROW_NAMES = ("ddim", "edict", "bdia", "direct")


def reconstruction_errors(model, frames: np.ndarray, steps: int, trace: str | None = None) -> dict:
    """Relative latent reconstruction error of each inversion (DDIM at guidance 1, the rest at 7.5);
    for inversion ``trace`` also its :class:`ReplayTrace` counts."""
    from videdit.pipeline import EditSettings, invert_frames, reconstruct

    row = {}
    for name in ROW_NAMES:
        g = 1.0 if name == "ddim" else 7.5
        s = EditSettings(source_prompt=PROMPT, target_prompt=PROMPT, steps=steps, guidance=g, inversion=name)
        with ReplayTrace(model.unet) if name == trace else contextlib.nullcontext() as tracer:
            inv = invert_frames(model, frames, s)
            if tracer is not None:
                tracer.replaying = True
            z = reconstruct(model, inv, s)
        row[f"{name} {steps}"] = float((z.float() - inv.source.float()).norm() / inv.source.float().norm())
        if tracer is not None:
            row.update(tracer.counts)
    return row


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha1(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


class ReplayTrace(contextlib.AbstractContextManager):
    """A UNet forward hook: of the calls after ``replaying`` is set, how many get an input (latents,
    timestep, text) a call before it got, and how many of those give the same output; an exact
    replay needs all."""

    def __init__(self, unet):
        self.unet, self.replaying, self.seen = unet, False, {}
        self.counts = {"replay calls": 0, "same input": 0, "same output": 0}

    def __enter__(self):
        self.handle = self.unet.register_forward_hook(self.record, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def record(self, module, args, kwargs, output) -> None:
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        key = (_digest(args[0]), int(torch.as_tensor(t).flatten()[0]), _digest(kwargs["encoder_hidden_states"]))
        if not self.replaying:
            self.seen[key] = _digest(output.sample)
            return
        self.counts["replay calls"] += 1
        if key in self.seen:
            self.counts["same input"] += 1
            self.counts["same output"] += self.seen[key] == _digest(output.sample)


def unet_determinism(model, size: int) -> dict:
    """Max |difference| of the UNet's output: the same input twice, and frame 0 alone against inside a batch of 4."""
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(4, 4, size // 8, size // 8, generator=gen).to(model.device, model.dtype)
        text = model.encode_text([PROMPT]).expand(4, -1, -1)
        a = model.unet(x, 500, encoder_hidden_states=text).sample.float()
        b = model.unet(x, 500, encoder_hidden_states=text).sample.float()
        c = model.unet(x[:1], 500, encoder_hidden_states=text[:1]).sample.float()
    return {"repeat diff": float((a - b).abs().max()), "batch diff": float((a[:1] - c).abs().max()),
            "|eps|/|x|": float(a.norm() / x.float().norm())}


@contextlib.contextmanager
def no_tf32(enabled: bool):
    """TF32 off for cuDNN and matmuls while ``enabled`` (else PyTorch's settings as they are), restored after."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if enabled:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def exactness(sd_dir: Path, args) -> dict:
    from videdit import io
    from videdit.models import load_model

    toy = ROOT / "videdit" / "toy" / "model"
    dtypes = ("fp32", "fp32-strict", "fp16", "bf16") if torch.device(args.device).type == "cuda" else ("fp32",)
    cases = [("toy 64", toy, 64, "cpu", "fp32")] if torch.device(args.device).type != "cpu" else []
    cases += [("toy 64", toy, 64, args.device, d) for d in dtypes]
    cases += [(f"{args.arch} {args.size}", sd_dir, args.size, args.device, d) for d in dtypes]
    out = {}
    for label, model_dir, size, device, dtype in cases:
        strict = dtype == "fp32-strict"
        with no_tf32(strict):
            model = load_model(model_dir, device=device, dtype="fp32" if strict else dtype)
            frames, _ = io.read_clip(SAMPLE, io.ReadOptions(max_frames=2, size=size))
            row = {**reconstruction_errors(model, frames, 10, trace="direct"),
                   **reconstruction_errors(model, frames, 50), **unet_determinism(model, size)}
        key = f"{label} {device} {dtype}"
        out[key] = row
        print(f"{key:<28}" + "".join(f"{n} {v:.3g}  " for n, v in row.items()), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["sd15", "tiny"], default="sd15")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--frames", type=int, default=8, help="frames per timing run")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"])
    p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                   help="also time diffusers' LEDITS++, DiffEdit and pix2pix-zero pipelines beside videdit's "
                        "(first dtype, 2 frames)")
    p.add_argument("--presets", action=argparse.BooleanOptionalAction, default=True,
                   help="also time configs/{%s}.yaml (first dtype only)" % ",".join(PRESETS))
    p.add_argument("--sections", nargs="+", choices=["correctness", "timing", "exactness", "speed"],
                   default=["correctness", "timing", "exactness", "speed"])
    p.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = p.parse_args()

    from videdit import io

    info = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else args.device
    print(f"device={info} torch={torch.__version__} arch={args.arch} size={args.size} steps={args.steps} "
          f"frames={args.frames}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="videdit-gpu-check-") as tmp:
        model_dir = make_model(args.arch, Path(tmp) / args.arch)
        if "timing" in args.sections and args.presets:   # Rerender's ControlNet, in its preset's row
            save_controlnet(model_dir)
        if "correctness" in args.sections:
            frames, _ = io.read_clip(SAMPLE, io.ReadOptions(max_frames=2, size=args.size))
            check = results["correctness"] = correctness(model_dir, args, frames)
            print("\ncorrectness: relative latent reconstruction error (10 steps) and UNet output vs fp32")
            names = list(next(iter(check.values())))
            print(f"{'dtype':<8}" + "".join(f"{n:>14}" for n in names))
            for dtype, row in check.items():
                print(f"{dtype:<8}" + "".join(f"{row[n]:>14.2e}" for n in names), flush=True)
        if "exactness" in args.sections:
            print("\nexactness: relative latent reconstruction error at 10 and 50 steps; UNet determinism", flush=True)
            results["exactness"] = exactness(model_dir, args)
        if "timing" in args.sections:
            times = results["timing"] = timing(model_dir, args)
            if failed := times.pop("failed", None):
                results["timing failed"] = failed
            print(f"\ntiming ({args.steps} steps, guidance 7.5, {args.size}x{args.size}; ratios side by side)")
            names = list(next(iter(times.values())))
            print(f"{'':<56}" + "".join(f"{d:>12}" for d in times))
            for n in names:
                print(f"{n:<56}" + "".join(f"{times[d][n]:>12.3f}" if n in times[d] else f"{'':>12}" for d in times))
            for d, row in times.items():
                ratio = row["videdit plain (s/frame)"] / row["diffusers loop (s/frame)"]
                print(f"{d}: videdit plain / diffusers loop = {ratio:.2f}")
        if args.out:   # what is measured so far, should the last section fail or run out of time
            args.out.write_text(json.dumps(results, indent=1))
        if "speed" in args.sections:
            print(f"\nspeed options ({args.dtypes[0]}): p2p after direct, offsets in the edit", flush=True)
            try:
                results["speed"] = speed(model_dir, args)
            except Exception as e:   # e.g. no Triton: the other sections' results stand
                results["speed"] = {"error": f"{type(e).__name__}: {e}"}
                print(f"speed section failed: {results['speed']['error']}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
