"""Peak memory of a video edit at 16, 64 and 256 frames: it must not grow with the clip.

Each length runs in a fresh subprocess (its peak RSS is its own): ``edit_video`` on the
first N frames of ../shared/data/videos/man-talking-portrait-long.mp4 at working size
``--size`` (short side), or on a synthetic clip (a texture sliding across a 64x64 frame,
``--synthetic``), with cross-frame attention anchored on the first frame and windows of
``--window`` frames, streamed to an mp4 in a temporary folder.

    python tools/video_memory.py --size 64 --steps 10
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "videos" / "man-talking-portrait-long.mp4"
LENGTHS = (16, 64, 256)


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


def child(args) -> None:
    import videdit
    from videdit import io

    with tempfile.TemporaryDirectory() as tmp:
        clip = synthetic_clip(Path(tmp) / "frames", args.child) if args.synthetic else CLIP
        t = time.perf_counter()
        res = videdit.edit_video(clip, Path(tmp) / "out.mp4", source_prompt="a man", target_prompt="a man, van gogh",
                                 model=args.model, steps=args.steps, use_cache=False, window=args.window,
                                 batch_size=args.batch_size, read=io.ReadOptions(max_frames=args.child, size=args.size),
                                 temporal={"cross_frame": {"mode": "first"}}, device=args.device)
        seconds = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: kilobytes
    print(json.dumps({"frames": res.stats.frames, "windows": res.stats.windows, "peak_mb": peak_mb,
                      "seconds": seconds}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--size", type=int, default=64, help="working size, short side")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--synthetic", action="store_true", help="a generated 64x64 clip instead of the long portrait")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if not args.synthetic and not CLIP.exists():
        sys.exit(f"{CLIP} not found; pass --synthetic")
    print(f"model={args.model} size={args.size} steps={args.steps} window={args.window} "
          f"batch={args.batch_size} cross_frame=first source={'synthetic' if args.synthetic else CLIP.name}")
    print(f"{'frames':>8}{'windows':>9}{'peak MB':>10}{'seconds':>10}")
    for n in LENGTHS:
        cmd = [sys.executable, __file__, "--child", str(n)] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("child", "synthetic")]
        cmd += ["--synthetic"] if args.synthetic else []
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode != 0:
            sys.exit(f"{n} frames failed:\n{res.stderr[-2000:]}")
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{r['frames']:>8}{r['windows']:>9}{r['peak_mb']:>10.0f}{r['seconds']:>10.1f}")


if __name__ == "__main__":
    main()
