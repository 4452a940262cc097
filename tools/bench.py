"""Speed and memory of videdit, side by side in one run; one subcommand per question:

    python tools/bench.py loop --model tiny-random --frames 16 --size 256 --steps 20
    python tools/bench.py editors --frames 4 --size 128 --steps 20
    python tools/bench.py keyframes --model tiny-random --frames 32 --size 128 --steps 10
    python tools/bench.py memory --size 64 --steps 10 [--synthetic]
    python tools/bench.py memory --presets tokenflow fatezero rerender ... --size 64 --steps 5
    python tools/bench.py toy --repeats 3
    python tools/bench.py peers --frames 4 --size 128 --steps 20
    python tools/bench.py tome --model tiny-random --sizes 256 512 --ratios 0.3 0.5
    python tools/bench.py deepcache --model tiny-random --sizes 256 512 --branches 0 1 --intervals 3 5
    python tools/bench.py speed --model tiny-random --frames 4 --size 128 --steps 10
    python tools/bench.py vae --model toy --sizes 256 512
    python tools/bench.py count [--only configs/]

- loop: seconds per frame and peak memory of invert + regenerate, videdit at 1 and 8 frames
  per UNet call against the same DDIM inversion + regeneration written with diffusers' own
  DDIMInverseScheduler and DDIMScheduler loop (same model, frames and batch);
- editors: time and peak memory of the attention editors' edit against the plain editor's
  (inversion excluded; on CUDA the edit's peak allocated GPU memory too);
- keyframes: what editing the keyframes alone saves: seconds, frames through the UNet and the
  VAE decoder, for keyframes (every 4) + flow propagation, + guided pixels, bilateral pixels
  (only the keyframes go through the model), and bilateral pixels again after an every-frame
  edit filled the inversion cache (its keyframes are cut out of the cached windows);
- memory: peak memory of a video edit at 16, 64 and 256 frames (it must not grow with the
  clip): cross-frame attention anchored on the first frame, windows of ``--window`` frames,
  streamed to an mp4, on the long portrait clip at working size ``--size`` or on a synthetic
  clip (``--synthetic``: a texture sliding across a 64x64 frame); with ``--presets``, each
  video preset (configs/NAME.yaml, at the table's steps, on tiny-random with what it needs
  built in code: ``PRESET_MEMORY``) at 32, 128 and 353 frames of the long portrait clip;
- toy: load time of the toy model and seconds of a 25-step single-frame edit (invert +
  regenerate, 64x64), against diffusers' ``StableDiffusionPipeline.from_pretrained`` of the
  same directory; the median of ``--repeats`` fresh processes, imports reported apart (a CLI
  run pays them once). Issue 3's targets on this CPU: load under 2 s, edit under 5 s;
- peers: seconds per frame of videdit's blending/score editors next to diffusers' own
  pipelines on the same model (tiny-random saved as a diffusers directory), frames and UNet
  evaluations (counted, per frame): LEDITS++ (``LEditsPPPipelineStableDiffusion``, vs ``ddpm``
  inversion + ``ledits``, no prompts, one concept, noise masks on both sides: LEDITS++'s
  cross-attention masks read layers at 1/4 of the latent side, which tiny-random lacks),
  DiffEdit (``StableDiffusionDiffEditPipeline`` vs ``ddim`` + ``diffedit``) and pix2pix-zero's
  regularised inversion (inversion only: the edits differ). Best of ``--repeats``.
- tome: seconds per UNet call (batch 2: one frame, guided) with token merging
  (``videdit.attention.TokenMerging``, tomesd's defaults) at each of ``--ratios`` against none, at
  square frames of each of ``--sizes`` pixels; the self-attention tokens of the merged (full-grid)
  layers before and after. Best of ``--repeats``.
- deepcache: seconds of a whole UNet call (batch 2: one frame, guided) and of DeepCache's shallow
  call (``videdit.core.deepcache``) for each of ``--branches``, at square frames of ``--sizes``
  pixels, and the speed-up per step at each of ``--intervals`` (one whole call, the others
  shallow). Best of ``--repeats``.
- speed: seconds per frame of prompt-to-prompt after ``direct`` (offsets in the edit), warm, with
  the model's speed options (``load_model``'s ``channels_last``, ``compile``; on a GPU also
  ``compile="reduce-overhead"``, CUDA graphs) against none, and
  the first run's seconds with the compiling in them (``EditStats.seconds['compile']``);
- vae: peak RSS rise and seconds of decoding one frame of each of ``--sizes`` with the VAE whole,
  tiled (``load_model``'s ``vae_tiling``) and in bf16 (``vae_dtype``), each in a fresh process,
  and how many levels the tiled and bf16 pixels differ from the whole fp32 decode;
- count: the work each preset (configs/*.yaml) and each inversion x editor pair does per output
  frame, counted by videdit.metrics.work.count_work on tiny-random (counts do not depend on the
  size): UNet frame-evaluations inverting and editing, UNet calls, ControlNet rows, VAE frames
  encoded and decoded, and the FLOPs that work costs at SD 1.5's architecture and 512x512.

Runs whose peak memory is reported run each configuration in a fresh process (this script
again, with a hidden ``--child``), so its peak RSS is its own. Ratios are to the table's first
row (or the diffusers side). On a CPU compare ratios only; absolute speed belongs to a GPU
run. The clips are in ../shared/data (or $VIDEDIT_SHARED_DATA); tiny-random's edits mean
nothing, these tables measure work, not quality (tools/tables.py measures that).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VIDEDIT_SHARED_DATA") or ROOT.parent / "shared" / "data")
WOLF = SHARED / "videos" / "wolf.mp4"
PORTRAIT = SHARED / "videos" / "man-talking-portrait-long.mp4"
SAMPLE = ROOT / "samples" / "red-circle.mp4"
TOY_MODEL = ROOT / "videdit" / "toy" / "model"


# -- shared helpers ----------------------------------------------------------------------------

def scratch_dir(prefix: str) -> str:
    """A temporary folder removed when the process exits (a table's inversion cache, its clips)."""
    import atexit
    import shutil

    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def load_frames(n: int, size: int, clip: Path = WOLF):
    """The first ``n`` frames of ``clip`` at ``size`` x ``size``, uint8 (n, size, size, 3); the
    shipped sample where ../shared is not at hand (a GPU machine), its frames repeated up to n."""
    import numpy as np

    from videdit import io

    frames, _ = io.read_clip(clip if clip.exists() else SAMPLE, io.ReadOptions(max_frames=n, size=(size, size)))
    return np.ascontiguousarray(np.resize(frames, (n, *frames.shape[1:])))


def peak_rss_mib() -> float:
    """This process's peak resident memory, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_fresh_process(spec: str) -> dict:
    """This command line run again with ``--child spec``; the JSON its last line prints."""
    res = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", spec], capture_output=True, text=True,
                         cwd=ROOT)
    if res.returncode != 0:
        sys.exit(f"{spec} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def rows_through(module):
    """A list that collects the batch size of each call of ``module`` (frames through the UNet,
    the decoder), by a forward pre-hook removed on exit."""
    rows: list[int] = []

    def hook(mod, args, kwargs):
        rows.append(int((args[0] if args else next(iter(kwargs.values()))).shape[0]))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield rows
    finally:
        handle.remove()


def synchronize(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best_of(fn: Callable[[], object], repeats: int, *, module=None, device="cpu", warm: bool = True
            ) -> tuple[float, int]:
    """(fastest seconds of ``repeats`` calls of ``fn``, batch rows through ``module`` in one call);
    one untimed warm-up call first unless ``warm`` is False."""
    if warm:
        fn()
    best, rows = float("inf"), 0
    with rows_through(module) if module is not None else contextlib.nullcontext([]) as counts:
        for _ in range(repeats):
            counts.clear()
            synchronize(device)
            t = time.perf_counter()
            fn()
            synchronize(device)
            best = min(best, time.perf_counter() - t)
        rows = sum(counts)
    return best, rows


def _width(spec: str) -> str:
    return re.match(r"[<>^]?\d*", spec).group()


class Table:
    """Prints a header of ``(name, format)`` columns (``"<36"``, ``">10.3f"``), then one line per
    :meth:`row`; a string in a number column (``""``, ``"-"``) is only aligned."""

    def __init__(self, *columns: tuple[str, str]):
        self.columns = columns
        print("".join(f"{name:{_width(spec)}}" for name, spec in columns), flush=True)

    def row(self, *cells) -> None:
        specs = [_width(spec) if isinstance(v, str) else spec for v, (_, spec) in zip(cells, self.columns)]
        print("".join(f"{v:{spec}}" for v, spec in zip(cells, specs)), flush=True)


# -- loop: invert + regenerate against diffusers' scheduler loop -------------------------------

def videdit_loop(model, frames, batch: int, steps: int, guidance: float) -> float:
    """Seconds of videdit's invert + regenerate of ``frames``, ``batch`` frames per UNet call."""
    from videdit.pipeline import EditSettings, edit_frames

    s = EditSettings(source_prompt="a wolf", target_prompt="a robot wolf", steps=steps, guidance=guidance,
                     batch_size=batch)
    edit_frames(model, frames[:1], EditSettings(steps=2, batch_size=1))  # warm-up
    synchronize(model.device)
    t = time.perf_counter()
    edit_frames(model, frames, s)
    synchronize(model.device)
    return time.perf_counter() - t


def diffusers_loop(model, frames, batch: int, steps: int, guidance: float) -> float:
    """The same with diffusers' DDIMInverseScheduler / DDIMScheduler loop."""
    import torch
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    model.decode_latents(model.encode_images(frames[:1]))  # warm-up
    unet = model.unet
    synchronize(model.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        latents = model.encode_images(frames, batch)
        src, tgt, unc = model.encode_text(["a wolf", "a robot wolf", ""]).chunk(3)
        out = []
        for i in range(0, len(latents), batch):
            x = latents[i:i + batch]
            n = len(x)
            inv = DDIMInverseScheduler.from_config(model.scheduler_config)
            inv.set_timesteps(steps)
            for t in inv.timesteps:
                x = inv.step(unet(x, t, encoder_hidden_states=src.expand(n, -1, -1)).sample, t, x).prev_sample
            sched = DDIMScheduler.from_config(model.scheduler_config)
            sched.set_timesteps(steps)
            text = torch.cat([unc.expand(n, -1, -1), tgt.expand(n, -1, -1)])
            for t in sched.timesteps:
                u, c = unet(torch.cat([x, x]), t, encoder_hidden_states=text).sample.chunk(2)
                x = sched.step(u + guidance * (c - u), t, x).prev_sample
            out.append(x)
        model.decode_latents(torch.cat(out), batch)
    synchronize(model.device)
    return time.perf_counter() - t0


def loop(a) -> None:
    if a.child:
        from videdit.models import load_model

        runner, batch = a.child.split(":")
        model = load_model(a.model, device=a.device, dtype=a.dtype)
        fn = videdit_loop if runner == "videdit" else diffusers_loop
        seconds = fn(model, load_frames(a.frames, a.size), int(batch), a.steps, a.guidance)
        print(json.dumps({"s_per_frame": seconds / a.frames, "peak_mb": peak_rss_mib()}))
        return
    rows = [(name, in_fresh_process(name)) for name in ("diffusers:8", "videdit:1", "videdit:8")]
    base = rows[0][1]["s_per_frame"]
    print(f"model={a.model} frames={a.frames} size={a.size} steps={a.steps} "
          f"guidance={a.guidance} device={a.device} dtype={a.dtype}")
    table = Table(("run (runner:frames per UNet call)", "<36"), ("s/frame", ">10.3f"), ("peak MB", ">10.0f"),
                  ("time vs diffusers", ">20.2f"))
    for name, r in rows:
        table.row(name, r["s_per_frame"], r["peak_mb"], r["s_per_frame"] / base)


# -- editors: attention editors against the plain editor ---------------------------------------

EDITORS = ("plain", "prompt_to_prompt", "plug_and_play", "masactrl", "cross_image")


def editors(a) -> None:
    if a.child:
        import torch

        from videdit.models import load_model
        from videdit.pipeline import EditSettings, edit_latents, invert_frames

        model = load_model(a.model, device=a.device, dtype=a.dtype)
        s = EditSettings(source_prompt="a wolf in a forest", target_prompt="a robot wolf in a forest", steps=a.steps,
                         guidance=7.5, batch_size=a.batch_size, editor=a.child)
        inv = invert_frames(model, load_frames(a.frames, a.size), s)
        cuda = model.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        before = peak_rss_mib()
        seconds, _ = best_of(lambda: edit_latents(model, inv, s), a.repeat, device=model.device, warm=False)
        out = {"editor": a.child, "seconds": seconds, "rss_after_inversion_mib": before, "rss_peak_mib": peak_rss_mib()}
        if cuda:
            out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        print(json.dumps(out))
        return
    rows = [in_fresh_process(editor) for editor in a.editors]
    base = next((r for r in rows if r["editor"] == "plain"), rows[0])
    print(f"{a.model}, {a.frames} frames at {a.size}x{a.size}, {a.steps} steps, device {a.device}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; edit only (inversion excluded)")
    gpu = "gpu_peak_mib" in base
    table = Table(("editor", "<18"), ("edit s", ">8.2f"), ("x plain", ">9.2f"), ("RSS peak MiB", ">14.0f"),
                  ("edit rise MiB", ">15.0f"), *([("GPU peak MiB", ">14.0f")] if gpu else []))
    for r in rows:
        table.row(r["editor"], r["seconds"], r["seconds"] / base["seconds"], r["rss_peak_mib"],
                  r["rss_peak_mib"] - r["rss_after_inversion_mib"], *([r["gpu_peak_mib"]] if gpu else []))


# -- keyframes: what editing the keyframes alone saves -----------------------------------------

KEYFRAME_ROWS = {
    "keyframes + flow": {"keyframes": {"every": 4}, "keyframe_flow": {}},
    "keyframes + flow + guided": {"keyframes": {"every": 4}, "keyframe_flow": {}, "pixels_guided": {}},
    "keyframes + bilateral": {"keyframes": {"every": 4}, "pixels_bilateral": {}},
}


def keyframes(a) -> None:
    import videdit
    from videdit import io

    model = videdit.load_model(a.model)
    kw = dict(source_prompt="a wolf", target_prompt="a red wolf", model=model, steps=a.steps, guidance=7.5,
              inversion="direct", editor="prompt_to_prompt", window=a.window,
              read=io.ReadOptions(max_frames=a.frames, size=a.size))
    print(f"model={a.model} clip={a.clip.name} frames={a.frames} size={a.size} steps={a.steps} window={a.window} "
          f"inversion=direct editor=prompt_to_prompt")
    table = Table(("edit", "<40"), ("s", ">8.1f"), ("x", ">7.2f"), ("UNet frames", ">13d"), ("x", ">7.2f"),
                  ("decoded", ">9d"), ("cache hits", ">12"))
    base = None
    runs = [(name, temporal, False) for name, temporal in KEYFRAME_ROWS.items()]
    runs.append(("keyframes + bilateral, windows cached", KEYFRAME_ROWS["keyframes + bilateral"], True))
    with tempfile.TemporaryDirectory() as tmp:
        for name, temporal, cached in runs:
            cache = Path(tmp) / name
            if cached:   # an every-frame edit first fills the cache with the windows' inversions
                videdit.edit_video(a.clip, cache_dir=cache, temporal=KEYFRAME_ROWS["keyframes + flow"], **kw)
            with rows_through(model.unet) as unet, rows_through(model.vae.decoder) as decoder:
                t = time.perf_counter()
                res = videdit.edit_video(a.clip, cache_dir=cache, temporal=temporal, **kw)
                seconds = time.perf_counter() - t
            base = base or (seconds, sum(unet))
            table.row(name, seconds, seconds / base[0], sum(unet), sum(unet) / base[1], sum(decoder),
                      f"{res.stats.cache_hits}/{res.stats.windows}")


# -- ebsynth: the Ebsynth stage's synthesis time ------------------------------------------------

def ebsynth(a) -> None:
    """One frame of Rerender-A-Video's Ebsynth stage: wolf's frame 1 from frame 0 (its style the
    frame itself) with video_blend.py's four guides, at the official iterations and fewer."""
    import numpy as np
    import torch

    from videdit.video.ebsynth import EbsynthConfig, Exemplar, edges, positional_ramp

    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          "cpu" if a.device == "auto" else a.device)
    print(f"clip={WOLF.name} device={device} threads={torch.get_num_threads()}")
    table = Table(("size", ">6"), ("search-vote x PatchMatch", ">26"), ("s / frame", ">11.2f"),
                  ("mean error", ">12.2f"))
    for size in a.sizes:
        frames = load_frames(2, size)
        key, frame = frames[0], frames[1]
        ramp = positional_ramp(*key.shape[:2])
        for iters in ((12, 6), (2, 2)):
            config = EbsynthConfig(search_vote_iters=iters[0], patchmatch_iters=iters[1])
            exemplar = Exemplar(key, [key, edges(key), key, ramp], config.guide_weights, config, device)
            guides = [frame, edges(frame), key, ramp]
            seconds, _ = best_of(lambda: exemplar.synthesize(guides), a.repeats, device=device, warm=False)
            out, _ = exemplar.synthesize(guides)
            table.row(size, f"{iters[0]} x {iters[1]}", seconds, float(np.abs(out.astype(float) - frame).mean()))
    if a.between:
        ebsynth_between(a, device)


def ebsynth_between(a, device) -> None:
    """The whole stage on wolf's first 12 frames (keyframes 0, 1, 6, 11, their results the source
    frames; 16 syntheses, 2 x 2 iterations): the source flows its chains read started ahead in the flow
    thread (the default) against estimated in place, each where it is read."""
    from videdit.video import rerender as rr
    from videdit.video.module import Window

    print("the frames between of 12 frames, keyframes 0, 1, 6, 11 (seconds of the stage)")
    table = Table(("size", ">6"), ("flows ahead s", ">14.2f"), ("in place s", ">11.2f"), ("ratio", ">7.2f"))
    ebsynth_options = {"search_vote_iters": 2, "patchmatch_iters": 2}
    for size in a.sizes:
        frames = load_frames(12, size)

        def stage(ahead: bool) -> float:
            module = rr.Rerender(rr.RerenderConfig(interval=5, ebsynth=ebsynth_options))
            module.ctx = SimpleNamespace(model=SimpleNamespace(device=device))   # the exemplars' device
            if not ahead:
                module._start_between_flows = lambda window, pairs: None
            for k in (0, 1, 6, 11):
                module.results[k], module.sources[k] = frames[k], frames[k]
            t = time.perf_counter()
            module.finish_clip(Window(0, 12, frames, last=True))
            return time.perf_counter() - t

        stage(True)   # warm-up: the flow thread, DIS
        best = {ahead: min(stage(ahead) for _ in range(a.repeats)) for ahead in (True, False)}
        table.row(size, best[True], best[False], best[True] / best[False])


# -- memory: peak memory against clip length ---------------------------------------------------

LENGTHS = (16, 64, 256)
PRESET_LENGTHS = (32, 128, 353)   # 353: the long portrait clip's every frame


PRESET_KEYWORDS = {"tome": "token_merging", "deepcache": "feature_cache"}   # a preset's key -> edit_video's


def read_preset(name: str) -> dict:
    """configs/NAME.yaml as ``edit_video`` keywords (``negative`` -> ``negative_prompt``), with its
    ``model``, ``controlnet``, ``control`` and ``target_suffix`` (what the CLI reads besides) as they are."""
    import yaml

    values = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    kw = {k: values[k] for k in ("inversion", "editor", "steps", "guidance", "seed", "strength", "window", "model",
                                 "controlnet", "control", "target_suffix") if k in values}
    kw["negative_prompt"] = values.get("negative", "")
    kw["temporal"] = values.get("temporal") or {}
    for k in ("inversion_params", "editor_params"):
        kw[k] = dict(values.get(k) or {})
    kw.update({keyword: values[key] for key, keyword in PRESET_KEYWORDS.items() if key in values})
    return kw


# Each preset's run for the memory table on tiny-random (32/64/64 channels; 8x8 latents at 64 px): the model it
# needs (tiny-pix2pix; tiny-random's ControlNet in place of each one a preset names, at its scale), FateZero's
# layers at tiny-random's scale (SD's >= 640 of 320/640/1280 channels and <= 32x32 of 64x64 latent tokens: >= 64
# and <= 4x4), TokenFlow's inversion through 10x the edit's steps (500 for 50; the latents kept are the edit's
# either way), the pose and depth variants' maps given as a file as a user gives them: the clip itself
# (tiny-random's ControlNet reads any picture alike; the map is streamed with the frames as a real OpenPose or
# MiDaS rendering would be).
PRESET_MEMORY = {
    "tokenflow": {"inversion_params": {"inversion_steps": "10x"}},
    "fatezero": {"inversion_params": {"min_channels": 64, "max_tokens": 16}},
    "rerender": {},
    "text2video-zero": {"model": "tiny-pix2pix"},
    "text2video-zero-canny": {},
    "text2video-zero-pose": {"control": [f"pose={PORTRAIT}"]},
    "text2video-zero-depth": {"control": [f"depth={PORTRAIT}"]},
    "tokenflow-plus": {},
    "fatezero-replay": {},
    "rerender-pull": {},
    "text2video-zero-ddim": {},
    "recolour": {},
}


def preset_run(name: str, steps: int, model: str) -> dict:
    """``edit_video`` keywords of preset ``name`` for the memory table (see ``PRESET_MEMORY``)."""
    from videdit.control.controlnet import pair_controls

    kw = read_preset(name)
    extra = PRESET_MEMORY[name]
    kw["steps"] = steps
    kw["model"] = extra.get("model", model)
    for k in ("inversion_params", "editor_params"):
        kw[k].update(extra.get(k, {}))
    if kw["inversion_params"].get("inversion_steps") == "10x":
        kw["inversion_params"]["inversion_steps"] = 10 * steps
    if nets := kw.pop("controlnet", None):   # the preset's ControlNets, tiny-random's in their place at their scales
        nets = ["tiny-random" + (f"={n.rsplit('=', 1)[1]}" if "=" in n else "") for n in nets]
        kw["control"] = pair_controls(extra.get("control") or kw.pop("control"), nets)
    suffix = kw.pop("target_suffix", "")
    kw["target_prompt"] = "a man, van gogh" + (f", {suffix}" if suffix else "")
    return kw


def synthetic_clip(folder: Path, n: int, size: int = 64) -> Path:
    """``n`` PNG frames of a blurred noise texture sliding one pixel a frame."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (size, size + n, 3), dtype=np.uint8), (7, 7), 2)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:05d}.png"), base[:, i:i + size])
    return folder


def memory(a) -> None:
    if a.presets:
        return memory_presets(a)
    if a.child:
        import videdit
        from videdit import io

        n = int(a.child)
        with tempfile.TemporaryDirectory() as tmp:
            clip = synthetic_clip(Path(tmp) / "frames", n) if a.synthetic else PORTRAIT
            t = time.perf_counter()
            res = videdit.edit_video(clip, Path(tmp) / "out.mp4", source_prompt="a man",
                                     target_prompt="a man, van gogh", model=a.model, steps=a.steps, use_cache=False,
                                     window=a.window, batch_size=a.batch_size,
                                     read=io.ReadOptions(max_frames=n, size=a.size, backend=a.backend),
                                     temporal={"cross_frame": {"mode": "first"}}, device=a.device)
            seconds = time.perf_counter() - t
        print(json.dumps({"frames": res.stats.frames, "windows": res.stats.windows, "peak_mb": peak_rss_mib(),
                          "seconds": seconds}))
        return
    if not a.synthetic and not PORTRAIT.exists():
        sys.exit(f"{PORTRAIT} not found; pass --synthetic")
    print(f"model={a.model} size={a.size} steps={a.steps} window={a.window} "
          f"batch={a.batch_size} cross_frame=first source={'synthetic' if a.synthetic else PORTRAIT.name}")
    table = Table(("frames", ">8"), ("windows", ">9"), ("peak MB", ">10.0f"), ("seconds", ">10.1f"))
    for n in LENGTHS:
        r = in_fresh_process(str(n))
        table.row(r["frames"], r["windows"], r["peak_mb"], r["seconds"])


def memory_presets(a) -> None:
    """Peak RSS of each preset on the first 32, 128 and 353 frames of the long portrait clip, each
    run in a fresh process; tiny-random at ``--size``, ``--steps`` steps, the preset's own window
    (TokenFlow's official one: the whole clip)."""
    if a.child:
        import videdit
        from videdit import io

        name, n = a.child.rsplit(":", 1)
        kw = preset_run(name, a.steps, a.model)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            res = videdit.edit_video(PORTRAIT, Path(tmp) / "out.mp4", source_prompt="a man", use_cache=False,
                                     batch_size=a.batch_size, device=a.device,
                                     read=io.ReadOptions(max_frames=int(n), size=a.size, backend=a.backend), **kw)
            seconds = time.perf_counter() - t
        print(json.dumps({"frames": res.stats.frames, "windows": res.stats.windows, "peak_mb": peak_rss_mib(),
                          "seconds": seconds}))
        return
    if not PORTRAIT.exists():
        sys.exit(f"{PORTRAIT} not found (the long portrait clip of ../shared/data)")
    print(f"model={a.model} size={a.size} steps={a.steps} batch={a.batch_size} source={PORTRAIT.name} "
          f"backend={a.backend}; "
          "peak RSS of each run's own process, MiB")
    lengths = a.lengths or PRESET_LENGTHS
    table = Table(("preset", "<24"), *[(f"{n} fr", ">9.0f") for n in lengths], ("windows", ">10"),
                  (f"growth {lengths[0]}->{lengths[-1]}", ">16"), ("s", ">7.0f"))
    for name in a.presets:
        runs = [in_fresh_process(f"{name}:{n}") for n in lengths]
        table.row(name, *[r["peak_mb"] for r in runs], "/".join(str(r["windows"]) for r in runs),
                  f"{runs[-1]['peak_mb'] - runs[0]['peak_mb']:+.0f} MiB", sum(r["seconds"] for r in runs))


# -- toy: load and edit time of the toy model --------------------------------------------------

def toy(a) -> None:
    if a.child:
        t0 = time.perf_counter()
        import torch

        from videdit import edit_image, load_model
        from videdit.toy import sample_scene

        out = {"import_s": time.perf_counter() - t0}
        torch.set_num_threads(a.threads)
        t = time.perf_counter()
        if a.child == "diffusers":
            from diffusers import StableDiffusionPipeline

            StableDiffusionPipeline.from_pretrained(TOY_MODEL, safety_checker=None, requires_safety_checker=False)
            out["load_s"] = time.perf_counter() - t
        else:
            model = load_model("toy")
            out["load_s"] = time.perf_counter() - t
            scene = sample_scene(3)
            colour = scene.objects[0].colour
            target = scene.caption.replace(colour, "blue" if colour != "blue" else "red")
            t = time.perf_counter()
            edit_image(scene.image, source_prompt=scene.caption, target_prompt=target, model=model, steps=25,
                       guidance=4.0, editor=a.child, use_cache=False)
            out["edit_s"] = time.perf_counter() - t
        print(json.dumps(out))
        return
    runs = {what: [in_fresh_process(what) for _ in range(a.repeats)]
            for what in ("diffusers", "plain", "prompt_to_prompt")}
    med = {w: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for w, rows in runs.items()}
    base = med["diffusers"]["load_s"]
    print(f"toy model ({TOY_MODEL.relative_to(ROOT)}), {a.threads} torch threads, "
          f"median of {a.repeats} fresh processes")
    table = Table(("what", "<52"), ("import s", ">9.2f"), ("load s", ">8.2f"), ("vs diffusers", ">13.2f"),
                  ("edit s", ">8.2f"))
    table.row("diffusers StableDiffusionPipeline.from_pretrained", med["diffusers"]["import_s"], base, 1.0, "")
    for w in ("plain", "prompt_to_prompt"):
        m = med[w]
        table.row(f"videdit load_model + 25-step edit, {w}", m["import_s"], m["load_s"], m["load_s"] / base,
                  m["edit_s"])


# -- peers: blending/score editors against diffusers' pipelines --------------------------------

SOURCE, TARGET, CONCEPT = "a wolf in a forest", "a robot wolf in a forest", "sunglasses"


def _pil(frames):
    from PIL import Image

    return [Image.fromarray(f) for f in frames]


def _pipeline(cls, directory: Path, device="cpu", dtype=None, **kw):
    pipe = cls.from_pretrained(directory, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                               **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def diffusers_ledits(directory: Path, frames, steps: int, device="cpu", dtype=None):
    import torch
    from diffusers import DDIMScheduler, LEditsPPPipelineStableDiffusion

    class IntTimestepDDIM(DDIMScheduler):
        """LEDITS++'s invert passes float timesteps to DDIMScheduler.add_noise, which indexes
        with them (an IndexError in diffusers 0.42); cast them. The math is unchanged."""

        def add_noise(self, original_samples, noise, timesteps):
            return super().add_noise(original_samples, noise, timesteps.long())

    pipe = _pipeline(LEditsPPPipelineStableDiffusion, directory, device, dtype)
    pipe.scheduler = IntTimestepDDIM.from_config(pipe.scheduler.config)  # DDIM: edit-friendly DDPM, as ours
    images = _pil(frames)

    def run():
        gen = torch.Generator().manual_seed(0)
        pipe.invert(image=images, source_prompt="", num_inversion_steps=steps, skip=0.0, generator=gen)
        return pipe(editing_prompt=[CONCEPT], edit_guidance_scale=5.0, edit_threshold=0.9, output_type="np",
                    use_intersect_mask=False, use_cross_attn_mask=False).images

    return pipe.unet, run


def diffusers_diffedit(directory: Path, frames, steps: int, device="cpu", dtype=None):
    import torch
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionDiffEditPipeline

    pipe = _pipeline(StableDiffusionDiffEditPipeline, directory, device, dtype)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.inverse_scheduler = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    images, n = _pil(frames), len(frames)

    def run():
        gen = torch.Generator().manual_seed(0)
        mask = pipe.generate_mask(image=images, source_prompt=[SOURCE] * n, target_prompt=[TARGET] * n,
                                  num_inference_steps=steps, num_maps_per_mask=10, mask_encode_strength=0.5,
                                  guidance_scale=7.5, generator=gen)
        latents = pipe.invert(prompt=[SOURCE] * n, image=images, num_inference_steps=steps, inpaint_strength=0.8,
                              guidance_scale=7.5, generator=gen).latents
        return pipe(prompt=[TARGET] * n, mask_image=mask, image_latents=latents, inpaint_strength=0.8,
                    num_inference_steps=steps, guidance_scale=7.5, output_type="np", generator=gen).images

    return pipe.unet, run


def diffusers_pix2pix_zero(directory: Path, frames, steps: int, device="cpu", dtype=None):
    import torch
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionPix2PixZeroPipeline

    pipe = _pipeline(StableDiffusionPix2PixZeroPipeline, directory, device, dtype, caption_generator=None,
                     caption_processor=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.inverse_scheduler = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    images = _pil(frames)

    def run():
        gen = torch.Generator().manual_seed(0)
        return pipe.invert(prompt=[SOURCE] * len(images), image=images, num_inference_steps=steps,
                           guidance_scale=1.0, generator=gen, output_type="latent").latents

    return pipe.unet, run


def peer_rows(directory: Path, model, frames, steps: int, repeats: int) -> list[tuple]:
    """(task, videdit's name for it, diffusers s, its UNet rows, videdit s, its UNet rows, diffusers peak GPU
    MiB, videdit peak GPU MiB) of each peer task on ``frames``: diffusers' pipeline from ``directory`` and
    videdit on ``model`` (the same weights), on ``model``'s device and dtype."""
    import torch

    from videdit.inversion import INVERSIONS
    from videdit.pipeline import EditSettings, edit_frames, invert_frames

    cuda = model.device.type == "cuda"

    def ours(run, **settings):
        s = EditSettings(steps=steps, batch_size=len(frames), **settings)
        return lambda: run(model, frames, s)

    def timed(fn, unet) -> tuple[float, int, float]:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        seconds, evals = best_of(fn, repeats, module=unet, device=model.device)
        return seconds, evals, torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else float("nan")

    concept = {"concepts": [{"text": CONCEPT, "scale": 5.0}], "threshold": 0.9, "masking": "noise"}
    pairs = [
        ("LEDITS++ invert+edit", diffusers_ledits, "ddpm + ledits",
         ours(edit_frames, guidance=1.0, strength=1.0, inversion="ddpm",
              inversion_params={"guidance": 1.0, "zero_last": False}, editor="ledits", editor_params=concept)),
        ("DiffEdit mask+invert+edit", diffusers_diffedit, "ddim + diffedit",
         ours(edit_frames, source_prompt=SOURCE, target_prompt=TARGET, guidance=7.5, inversion="ddim",
              inversion_params={"guidance": 7.5}, editor="diffedit",
              editor_params={"n_samples": 10, "mask_encode_strength": 0.5})),
    ]
    if "pix2pix_zero" in INVERSIONS:
        pairs.append(("pix2pix-zero inversion", diffusers_pix2pix_zero, "pix2pix_zero inversion",
                      ours(invert_frames, source_prompt=SOURCE, inversion="pix2pix_zero",
                           inversion_params={"reference_size": 0})))
    rows = []
    for task, make_peer, ours_name, our_run in pairs:
        try:
            unet, peer = make_peer(directory, frames, steps, model.device, model.dtype)
            peer_s, peer_evals, peer_mib = timed(peer, unet)
        except Exception as e:  # a pipeline missing from this diffusers version
            print(f"{task}: diffusers side failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
            peer_s, peer_evals, peer_mib = float("nan"), 0, float("nan")
        unet = peer = None   # the pipeline freed before ours runs
        our_s, our_evals, our_mib = timed(our_run, model.unet)
        rows.append((task, ours_name, peer_s, peer_evals, our_s, our_evals, peer_mib, our_mib))
    return rows


def peers(a) -> None:
    import warnings

    import torch
    from diffusers.utils import logging as diffusers_logging

    from videdit.models import load_model
    from videdit.models.tiny import save_tiny_random

    warnings.filterwarnings("ignore")
    diffusers_logging.set_verbosity_error()
    frames = load_frames(a.frames, a.size)
    with tempfile.TemporaryDirectory() as tmp:
        directory = save_tiny_random(Path(tmp) / "tiny-random")
        rows = peer_rows(directory, load_model(directory, device="cpu"), frames, a.steps, a.repeats)
    n = a.frames
    print(f"tiny-random, {n} frames of wolf.mp4 at {a.size}x{a.size}, {a.steps} steps, "
          f"{torch.get_num_threads()} CPU thread(s), best of {a.repeats}")
    table = Table(("task", "<28"), ("videdit", "<24"), ("diffusers s/f", ">14.3f"), ("videdit s/f", ">13.3f"),
                  ("ratio", ">7.2f"), ("evals/f d", ">11.0f"), ("evals/f v", ">11.0f"))
    for task, name, ps, pe, vs, ve, _, _ in rows:
        table.row(task, name, ps / n, vs / n, vs / ps, pe / n, ve / n)
    print("ratio = videdit time / diffusers time (< 1: videdit faster)")


# -- tome: token merging's speed-up per UNet call ------------------------------------------------

def one_frame_calls(a):
    """(model, its UNet, the texts (2, L, D): uncond, cond) of the per-call benchmarks, their header printed."""
    from videdit.models import load_model

    model = load_model(a.model, device=a.device, dtype=a.dtype)
    text = model.encode_text(["", "a wolf"]).to(model.unet.dtype)
    print(f"{a.model}, one frame per call, guided (batch 2), device {model.device}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; best of {a.repeats}")
    return model, model.unet, text


def tome(a) -> None:
    import torch

    from videdit.attention import TokenMerging, token_merging

    model, unet, text = one_frame_calls(a)
    table = Table(("size", "<8"), ("tokens", ">14"), ("ratio", ">7.2f"), ("ms / call", ">11.1f"),
                  ("speed-up", ">10.2f"))
    for size in a.sizes:
        h = w = size // model.vae_scale_factor
        x = torch.randn(2, unet.config.in_channels, h, w, generator=torch.Generator().manual_seed(0))
        x, t = x.to(model.device, unet.dtype), torch.full((2,), 500, device=model.device)

        def call():
            with torch.no_grad():
                unet(x, t, encoder_hidden_states=text).sample

        base, _ = best_of(call, a.repeats, device=model.device)
        table.row(f"{size}", f"{h * w}", 0.0, base * 1e3, 1.0)
        for ratio in a.ratios:
            with token_merging(unet, TokenMerging(ratio=ratio), seed=0, latent_size=(h, w)) as blocks:
                seconds, _ = best_of(call, a.repeats, device=model.device)
            n, m = max(b.tokens for b in blocks.values())
            table.row(f"{size}", f"{n} -> {m}", ratio, seconds * 1e3, base / seconds)
def deepcache(a) -> None:
    """Seconds of a whole UNet call and of DeepCache's shallow call at each size, and the speed-up
    per step that gives at each interval (one whole call, interval - 1 shallow ones)."""
    import torch

    from videdit.core.conditioning import UnetCall, model_call
    from videdit.core.deepcache import _shallow, _whole
    from videdit.core.loop import CallInfo

    model, unet, text = one_frame_calls(a)
    table = Table(("size", "<6"), ("branch", ">7"), ("whole ms", ">10.1f"), ("shallow ms", ">11.1f"),
                  *[(f"x{k}", ">7.2f") for k in a.intervals])
    for size in a.sizes:
        h = w = size // model.vae_scale_factor
        x = torch.randn(2, unet.config.in_channels, h, w, generator=torch.Generator().manual_seed(0))
        call = model_call(unet, UnetCall(sample=x.to(model.device, unet.dtype), text=text, info=CallInfo(),
                                         timestep=torch.full((2,), 500, device=model.device)))
        for branch in a.branches:
            with torch.no_grad():
                _, kept = _whole(unet, call, branch)
                whole, _ = best_of(lambda: _whole(unet, call, branch), a.repeats, device=model.device)
                shallow, _ = best_of(lambda: _shallow(unet, call, kept, branch), a.repeats, device=model.device)
            table.row(f"{size}", f"{branch}", whole * 1e3, shallow * 1e3,
                      *[k * whole / (whole + (k - 1) * shallow) for k in a.intervals])


SPEED_OPTIONS = {"eager": {}, "channels-last": {"channels_last": True}, "compile": {"compile": True},
                 "compile + channels-last": {"compile": True, "channels_last": True},
                 "CUDA graphs + channels-last": {"compile": "reduce-overhead", "channels_last": True}}   # load_model's
CUDA_ONLY = ("CUDA graphs + channels-last",)   # on a CPU the same as "compile + channels-last"


def speed_settings(steps: int, batch_size: int = 8, source: str = "a wolf", target: str = "a fox"):
    """Prompt-to-prompt after ``direct`` with its offsets taken in the edit (issue 20's 0.5 s/frame case)."""
    from videdit.pipeline import EditSettings

    return EditSettings(source_prompt=source, target_prompt=target, steps=steps, editor="prompt_to_prompt",
                        inversion="direct", inversion_params={"offsets": "in_edit"}, batch_size=batch_size)


def speed_runs(spec, frames, settings, *, device, dtype, repeats: int, labels=tuple(SPEED_OPTIONS)):
    """(label, first run s, of it compiling s, warm s, compiling in the warm runs s: 0 unless a graph
    compiles again) of ``settings`` on ``frames`` with each of the model's speed options (``SPEED_OPTIONS``),
    a fresh model each, compiled graphs dropped between them."""
    import torch

    from videdit.models import load_model
    from videdit.pipeline import EditStats, edit_frames

    for label in labels:
        model = load_model(spec, device=device, dtype=dtype, **SPEED_OPTIONS[label])
        first = EditStats()
        synchronize(model.device)
        t = time.perf_counter()
        edit_frames(model, frames, settings, stats=first)
        synchronize(model.device)
        first_s = time.perf_counter() - t
        again = EditStats()
        warm, _ = best_of(lambda: edit_frames(model, frames, settings, stats=again), repeats, device=model.device,
                          warm=False)
        yield label, first_s, first.seconds["compile"], warm, again.seconds["compile"]
        model = None   # freed before the next one loads
        torch._dynamo.reset()


def speed(a) -> None:
    """Seconds per frame of prompt-to-prompt after ``direct`` (offsets in the edit) with each of
    the model's speed options, once warm, and the first run's compiling apart."""
    frames = load_frames(a.frames, a.size)
    print(f"{a.model}, {a.frames} frames at {a.size}px, {a.steps} steps, device {a.device}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; best of {a.repeats}")
    table = Table(("options", "<26"), ("first run s", ">12.1f"), ("compiling s", ">12.1f"), ("warm s/frame", ">13.3f"),
                  ("ratio", ">7.2f"), ("compiling again s", ">18.1f"))
    base = None
    labels = [k for k in SPEED_OPTIONS if k not in CUDA_ONLY or a.device.startswith("cuda")]
    for label, first_s, compiling, warm, again in speed_runs(a.model, frames, speed_settings(a.steps, a.batch_size),
                                                             device=a.device, dtype=a.dtype, repeats=a.repeats,
                                                             labels=labels):
        base = base or warm
        table.row(label, first_s, compiling, warm / a.frames, warm / base, again)


def vae(a) -> None:
    """Peak memory and seconds of decoding one frame at each size with the VAE whole and tiled
    (each in a fresh process), and how far tiling and a bf16 VAE move the pixels."""
    import numpy as np
    import torch

    from videdit.models import load_model

    if a.child:
        size, mode = a.child.split(":")
        model = load_model(a.model, device="cpu", vae_tiling=mode == "tiled",
                           vae_dtype="bf16" if mode == "bf16" else None)
        z = torch.randn(1, model.latent_channels, int(size) // model.vae_scale_factor,
                        int(size) // model.vae_scale_factor, generator=torch.Generator().manual_seed(0))
        before = peak_rss_mib()
        t = time.perf_counter()
        pixels = model.decode_latents(z)
        seconds = time.perf_counter() - t
        np.save(Path(a.scratch) / f"{size}-{mode}.npy", pixels)
        print(json.dumps({"seconds": seconds, "rise_mib": peak_rss_mib() - before}))
        return
    print(f"{a.model}, one frame decoded, device cpu, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    table = Table(("size", "<6"), ("mode", "<7"), ("seconds", ">9.2f"), ("peak rise MiB", ">14.0f"),
                  ("mean levels vs whole", ">21.2f"), ("max", ">5.0f"))
    with tempfile.TemporaryDirectory() as scratch:
        sys.argv += ["--scratch", scratch]
        for size in a.sizes:
            for mode in ("whole", "tiled", "bf16"):
                r = in_fresh_process(f"{size}:{mode}")
                diff = np.abs(np.load(Path(scratch) / f"{size}-{mode}.npy").astype(int)
                              - np.load(Path(scratch) / f"{size}-whole.npy"))
                table.row(f"{size}", mode, r["seconds"], r["rise_mib"], diff.mean(), diff.max())


# -- count: the work each preset and each inversion x editor pair does -------------------------

# a word swap of as many tokens (tiny-random's tokenizer spells by character), for prompt_to_prompt's replace
COUNT_SOURCE, COUNT_TARGET = "a red circle on a gray background", "a tan circle on a gray background"


# inversion options that change how much work an edit does, counted with every editor that runs a source branch
COUNT_VARIANTS = {("direct", "offsets"): "in_edit"}


def count_cases(size: int, steps: int) -> dict[str, dict]:
    """name -> edit_video keyword arguments: every preset in configs/ as `--config` runs it (a
    ControlNet is tiny-random's; a depth or pose map, canny: the count is the same), then every
    inversion x editor pair at ``steps`` steps and the methods' defaults (InstructPix2Pix on tiny-pix2pix),
    then the ``COUNT_VARIANTS`` with every editor that has a source branch."""
    import numpy as np
    import yaml

    from videdit.control import ControlSpec
    from videdit.editing import EDITORS
    from videdit.inversion import INVERSIONS

    mask = np.zeros((size, size), np.float32)
    mask[:, : size // 2] = 1
    extra = {"blended": {"mask": mask}, "differential": {"mask": mask * 0.75},
             "sega": {"concepts": [{"text": "blue", "scale": 5.0}]},
             "ledits": {"concepts": [{"text": "blue"}], "masking": "noise"}}   # tiny-random lacks its mask layers
    cases = {}
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        kw = yaml.safe_load(path.read_text()) or {}
        kw.pop("fps", None)
        if "negative" in kw:
            kw["negative_prompt"] = kw.pop("negative")
        for key, keyword in (("source", "source_prompt"), *PRESET_KEYWORDS.items()):
            if key in kw:   # the CLI's and the presets' names
                kw[keyword] = kw.pop(key)
        if "target_suffix" in kw:
            kw["target_prompt"] = f"{COUNT_TARGET}, {kw.pop('target_suffix')}"
        kw.pop("model", None)   # tiny-random in the place of the file's, tiny-pix2pix of InstructPix2Pix
        if kw.get("editor") == "instruct_pix2pix":
            kw["model"] = "tiny-pix2pix"
        nets = kw.pop("controlnet", [])
        kw.pop("control", None)
        if nets:
            kw["control"] = [ControlSpec("canny", "tiny-random", float(n.split("=")[1])) for n in nets]
        words = (kw.get("editor_params") or {}).get("reweight") or {}
        if words:   # the words it reweights, in the target
            kw["target_prompt"] = f"{kw.get('target_prompt', COUNT_TARGET)}, {' '.join(words)}"
        if kw.get("editor") in extra and not (kw.get("editor_params") or {}).get("mask"):
            kw["editor_params"] = {**extra[kw["editor"]], **(kw.get("editor_params") or {})}
        cases[f"configs/{path.name}"] = kw
    for inv in sorted(INVERSIONS):
        for ed in sorted(EDITORS):
            cases[f"{inv} + {ed}"] = dict(inversion=inv, editor=ed, editor_params=extra.get(ed, {}), steps=steps,
                                          **({"model": "tiny-pix2pix"} if ed == "instruct_pix2pix" else {}))
    for (inv, option), value in COUNT_VARIANTS.items():   # the options that change the work, with each editor
        for ed in EDITORS.having("has_source_branch"):
            cases[f"{inv} ({option}={value}) + {ed}"] = dict(inversion=inv, inversion_params={option: value}, editor=ed,
                                                             editor_params=extra.get(ed, {}), steps=steps)
    return cases


def count(a) -> None:
    import warnings

    import torch

    import videdit
    from videdit import io
    from videdit.errors import VideditError
    from videdit.metrics.work import count_work, sd15_flops

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    flops = sd15_flops()
    models = {}
    print(f"tiny-random, {a.frames} frames of {SAMPLE.name} at {a.size}x{a.size}, UNet batch {a.batch_size}; "
          f"per output frame: UNet frame-evaluations (batch rows) inverting and editing, UNet calls, ControlNet "
          f"rows, VAE frames encoded and decoded, and TFLOP at SD 1.5's architecture, 512x512 (UNet "
          f"{flops['unet'] / 1e9:.0f} GFLOP a row, VAE encoder {flops['vae_encoder'] / 1e9:.0f}, decoder "
          f"{flops['vae_decoder'] / 1e9:.0f}; FlopCounterMode); presets at their own steps, pairs at {a.steps}")
    table = Table(("case", "<50"), ("steps", ">6"), ("UNet inv", ">9.1f"), ("UNet edit", ">10.1f"),
                  ("calls", ">7.1f"), ("ctrl", ">6.1f"), ("enc", ">5.1f"), ("dec", ">5.1f"), ("TFLOP", ">7.1f"))
    failed = []
    for name, kw in count_cases(a.size, a.steps).items():
        if a.only and a.only not in name:
            continue
        kw = dict(kw)
        model_name = kw.pop("model", "tiny-random")
        model = models.get(model_name) or models.setdefault(model_name, videdit.load_model(model_name, device="cpu"))
        kw.setdefault("window", a.frames)
        kw.setdefault("source_prompt", COUNT_SOURCE)
        kw.setdefault("target_prompt", COUNT_TARGET)
        try:
            torch.manual_seed(0)
            with count_work(model) as work:
                res = videdit.edit_video(SAMPLE, None, model=model, batch_size=a.batch_size, use_cache=False,
                                         read=io.ReadOptions(max_frames=a.frames, size=(a.size, a.size)), **kw)
        except VideditError as e:   # a pair that refuses (an editor that needs its own inversion, ...)
            print(f"{name:<50}refused: {(str(e).splitlines() or [''])[0][:110]}", flush=True)
            continue
        except Exception as e:      # a bug: named, and the command fails at the end
            failed.append(name)
            print(f"{name:<50}FAILED: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:100]}", flush=True)
            continue
        r = work.per_frame(res.stats.frames)
        steps = kw.get("steps")
        table.row(name, "" if steps is None else str(steps), r["unet_invert"], r["unet_edit"], r["unet_calls"],
                  r["controlnet"], r["vae_encoded"], r["vae_decoded"], r["tflop"])
    if failed:
        sys.exit(f"{len(failed)} case(s) failed: {', '.join(failed)}")


# -- command line ------------------------------------------------------------------------------

def subcommands(description: str, child: bool = False):
    """A parser with subcommands, and ``command(name, run, help, **defaults)`` adding one whose
    options are ``defaults`` (``--name`` typed as its default); ``child``: each also takes the
    hidden ``--child`` a fresh process gets."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, run, help: str, **defaults) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.set_defaults(run=run)
        if child:
            c.add_argument("--child", help=argparse.SUPPRESS)   # set in the fresh process
        for option, default in defaults.items():
            c.add_argument(f"--{option.replace('_', '-')}", type=type(default), default=default)
        return c

    return p, command


def main() -> None:
    p, command = subcommands(__doc__, child=True)

    command("loop", loop, "invert + regenerate: videdit at 1 and 8 frames per UNet call against diffusers' loop",
            model="tiny-random", frames=16, size=256, steps=20, guidance=7.5, device="auto", dtype="fp32")
    c = command("editors", editors, "time and peak memory of the attention editors against the plain editor",
                model="tiny-random", frames=4, size=128, steps=20, batch_size=8, repeat=3, device="cpu", dtype="fp32")
    c.add_argument("--editors", nargs="+", default=list(EDITORS))
    c = command("keyframes", keyframes, "seconds and frames through UNet and decoder when only keyframes are edited",
                model="tiny-random", frames=32, size=128, steps=10, window=16)
    c.add_argument("--clip", type=Path, default=WOLF)
    c = command("memory", memory, "peak memory of a video edit at 16, 64 and 256 frames",
                model="tiny-random", steps=10, window=16, batch_size=8, device="cpu")
    c.add_argument("--size", type=int, default=64, help="working size, short side")
    c.add_argument("--synthetic", action="store_true", help="a generated 64x64 clip instead of the long portrait")
    c.add_argument("--presets", nargs="*", choices=list(PRESET_MEMORY),
                   help="instead: these presets (configs/NAME.yaml) at 32, 128 and 353 frames of the long portrait")
    c.add_argument("--lengths", nargs="*", type=int, help="with --presets: these clip lengths")
    c.add_argument("--backend", choices=["auto", "decord", "pyav"], default="auto",
                   help="the video decoder (auto: PyAV; decord holds more memory as it reads, see io/video.py)")
    command("toy", toy, "load and 25-step edit time of the toy model against diffusers' from_pretrained",
            repeats=3, threads=2)
    c = command("peers", peers, "blending/score editors against diffusers' LEDITS++, DiffEdit and pix2pix-zero",
                frames=4, steps=20, repeats=2)
    c.add_argument("--size", type=int, default=128, help="frame side")
    c = command("tome", tome, "seconds per UNet call with token merging (tomesd) against none",
                model="tiny-random", repeats=3, device="cpu", dtype="fp32")
    c.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square frame sides, pixels")
    c.add_argument("--ratios", type=float, nargs="+", default=[0.5], help="token merging ratios")
    c = command("deepcache", deepcache, "seconds of a whole UNet call and of DeepCache's shallow one, speed-up per "
                "step at each interval", model="tiny-random", repeats=3, device="cpu", dtype="fp32")
    c.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square frame sides, pixels")
    c.add_argument("--branches", type=int, nargs="+", default=[0], help="DeepCache branches")
    c.add_argument("--intervals", type=int, nargs="+", default=[3, 5], help="DeepCache intervals")
    c = command("ebsynth", ebsynth, "seconds per frame of Rerender-A-Video's Ebsynth stage (videdit.video.ebsynth)",
                repeats=1, device="auto")
    c.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    c.add_argument("--between", action="store_true", help="and the whole stage of 12 frames, flows ahead and in place")
    c = command("speed", speed, "seconds per frame of p2p after direct eager, with --channels-last and --compile "
                "(compiling apart)", model="tiny-random", frames=4, size=128, steps=10, batch_size=4, repeats=2,
                device="cpu", dtype="fp32")
    c = command("vae", vae, "peak memory and seconds of decoding a frame with the VAE whole, tiled and in bf16",
                model="toy")
    c.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square frame sides, pixels")
    c.add_argument("--scratch", help=argparse.SUPPRESS)
    c = command("count", count, "UNet, ControlNet and VAE work per output frame of each preset and inversion x "
                "editor pair, and its FLOPs at SD 1.5's size", frames=8, size=32, steps=50, batch_size=8)
    c.add_argument("--only", help="only the cases whose name contains this")
    a = p.parse_args()
    a.run(a)


if __name__ == "__main__":
    main()
