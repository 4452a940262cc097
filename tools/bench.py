"""Seconds per frame and peak memory of invert + regenerate, side by side in one run:

- videdit with UNet batch size 1 and 8 (frames per UNet call);
- the same DDIM inversion + regeneration written with diffusers' own DDIMInverseScheduler
  and DDIMScheduler loop, on the same model, frames and batch.

Each configuration runs in a fresh subprocess so its peak RSS is its own. Ratios are to the
diffusers loop. On a CPU compare ratios only; absolute speed belongs to a GPU run.

    python tools/bench.py --model tiny-random --frames 16 --size 256 --steps 20
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "videos" / "wolf.mp4"


def load_frames(n: int, size: int):
    import numpy as np

    from videdit import io

    # the shipped sample where ../shared is not at hand (a GPU machine), its frames repeated up to n
    frames, _ = io.read_clip(CLIP if CLIP.exists() else ROOT / "samples" / "red-circle.mp4",
                             io.ReadOptions(max_frames=n, size=(size, size)))
    return np.ascontiguousarray(np.resize(frames, (n, *frames.shape[1:])))


def run_videdit(args, batch: int, model=None) -> float:
    """Seconds for invert + regenerate of ``args.frames`` frames (``model``: already loaded, or ``args.model``)."""
    from videdit.models import load_model
    from videdit.pipeline import EditSettings, edit_frames

    model = model or load_model(args.model, device=args.device, dtype=args.dtype)
    frames = load_frames(args.frames, args.size)
    s = EditSettings(source_prompt="a wolf", target_prompt="a robot wolf", steps=args.steps,
                     guidance=args.guidance, batch_size=batch)
    edit_frames(model, frames[:1], EditSettings(steps=2, batch_size=1))  # warm-up
    t = time.perf_counter()
    edit_frames(model, frames, s)
    return time.perf_counter() - t


def run_diffusers(args, batch: int, model=None) -> float:
    """The same with diffusers' DDIMInverseScheduler / DDIMScheduler loop."""
    import torch
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    from videdit.models import load_model

    model = model or load_model(args.model, device=args.device, dtype=args.dtype)
    frames = load_frames(args.frames, args.size)
    model.decode_latents(model.encode_images(frames[:1]))  # warm-up
    unet = model.unet
    t0 = time.perf_counter()
    with torch.no_grad():
        latents = model.encode_images(frames, batch)
        src, tgt, unc = model.encode_text(["a wolf", "a robot wolf", ""]).chunk(3)
        out = []
        for i in range(0, len(latents), batch):
            x = latents[i:i + batch]
            n = len(x)
            inv = DDIMInverseScheduler.from_config(model.scheduler_config)
            inv.set_timesteps(args.steps)
            for t in inv.timesteps:
                x = inv.step(unet(x, t, encoder_hidden_states=src.expand(n, -1, -1)).sample, t, x).prev_sample
            sched = DDIMScheduler.from_config(model.scheduler_config)
            sched.set_timesteps(args.steps)
            text = torch.cat([unc.expand(n, -1, -1), tgt.expand(n, -1, -1)])
            for t in sched.timesteps:
                u, c = unet(torch.cat([x, x]), t, encoder_hidden_states=text).sample.chunk(2)
                x = sched.step(u + args.guidance * (c - u), t, x).prev_sample
            out.append(x)
        model.decode_latents(torch.cat(out), batch)
    return time.perf_counter() - t0


def child(args) -> None:
    runner, batch = args.child.split(":")
    seconds = (run_videdit if runner == "videdit" else run_diffusers)(args, int(batch))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"s_per_frame": seconds / args.frames, "peak_mb": peak_mb}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    rows = []
    for name in ("diffusers:8", "videdit:1", "videdit:8"):
        cmd = [sys.executable, __file__, "--child", name] + [f"--{k}={v}" for k, v in vars(args).items()
                                                              if k != "child" and v is not None]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode != 0:
            sys.exit(f"{name} failed:\n{res.stderr[-2000:]}")
        rows.append((name, json.loads(res.stdout.strip().splitlines()[-1])))
    base = rows[0][1]["s_per_frame"]
    print(f"model={args.model} frames={args.frames} size={args.size} steps={args.steps} "
          f"guidance={args.guidance} device={args.device} dtype={args.dtype}")
    print(f"{'run (runner:frames per UNet call)':<36}{'s/frame':>10}{'peak MB':>10}{'time vs diffusers':>20}")
    for name, r in rows:
        print(f"{name:<36}{r['s_per_frame']:>10.3f}{r['peak_mb']:>10.0f}{r['s_per_frame'] / base:>20.2f}")


if __name__ == "__main__":
    main()
