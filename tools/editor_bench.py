"""Time and peak memory of the attention editors against the plain editor, side by side.

Each editor runs in a fresh subprocess (so its peak RSS is its own): load the model, read
the frames, DDIM-invert them once, then time ``edit_latents`` (best of ``--repeat``). The
memory columns are the process's peak RSS after inverting and after editing, and the rise
the edit caused; on CUDA the peak allocated GPU memory of the edit is shown as well.

    OMP_NUM_THREADS=1 python tools/editor_bench.py --frames 4 --size 128 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "videos" / "wolf.mp4"
EDITORS = ("plain", "prompt_to_prompt", "plug_and_play", "masactrl", "cross_image")
SOURCE, TARGET = "a wolf in a forest", "a robot wolf in a forest"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(args) -> dict:
    import numpy as np
    import torch

    from videdit import io
    from videdit.models import load_model
    from videdit.pipeline import EditSettings, edit_latents, invert_frames

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    frames, _ = io.read_clip(CLIP, io.ReadOptions(max_frames=args.frames, size=(args.size, args.size)))
    frames = np.ascontiguousarray(frames[:args.frames])
    s = EditSettings(source_prompt=SOURCE, target_prompt=TARGET, steps=args.steps, guidance=7.5,
                     batch_size=args.batch_size, editor=args.editor)
    inv = invert_frames(model, frames, s)
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _rss_mib()
    best = float("inf")
    for _ in range(args.repeat):
        t = time.perf_counter()
        edit_latents(model, inv, s)
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    out = {"editor": args.editor, "seconds": best, "rss_after_inversion_mib": before, "rss_peak_mib": _rss_mib()}
    if cuda:
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--editors", nargs="+", default=list(EDITORS))
    p.add_argument("--editor", help=argparse.SUPPRESS)   # set in the subprocess
    args = p.parse_args()
    if args.editor:
        print(json.dumps(child(args)))
        return
    rows = []
    for editor in args.editors:
        cmd = [sys.executable, __file__, "--editor", editor, "--model", args.model, "--frames", str(args.frames),
               "--size", str(args.size), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--repeat", str(args.repeat), "--device", args.device, "--dtype", args.dtype]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
        if done.returncode != 0:
            sys.exit(f"{editor} failed:\n{done.stderr}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = next((r for r in rows if r["editor"] == "plain"), rows[0])
    print(f"{args.model}, {args.frames} frames at {args.size}x{args.size}, {args.steps} steps, device {args.device}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; edit only (inversion excluded)")
    gpu = "gpu_peak_mib" in base
    head = f"{'editor':<18}{'edit s':>8}{'x plain':>9}{'RSS peak MiB':>14}{'edit rise MiB':>15}"
    print(head + (f"{'GPU peak MiB':>14}" if gpu else ""))
    for r in rows:
        line = (f"{r['editor']:<18}{r['seconds']:>8.2f}{r['seconds'] / base['seconds']:>9.2f}"
                f"{r['rss_peak_mib']:>14.0f}{r['rss_peak_mib'] - r['rss_after_inversion_mib']:>15.0f}")
        print(line + (f"{r['gpu_peak_mib']:>14.0f}" if gpu else ""))


if __name__ == "__main__":
    main()
