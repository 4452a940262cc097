"""Warp error of independent per-frame editing against each temporal mechanism, on real clips,
side by side in one run, each also as a ratio to the source clip's own warp error.

    python tools/temporal_table.py --model tiny-random --frames 16 --size 128 --steps 10

Warp error: the edited frame t+1 warped back to t along the *source* clip's DIS flow, mean
absolute error (0-255) over pixels the flow finds visible in both. Prompts from
../shared/data/cases.json. With tiny-random the edits mean nothing; the table measures only
how much each mechanism holds frames together.

Cross-frame attention comes out at 0.995-1.001x of independent editing on tiny-random, and no
choice of anchors can do better there (tools/cross_frame_probe.py, wolf, 8 frames): its random
self-attention is uniform (attn1 entropy 0.991 of log T), so each frame's attention output is
the mean of its values, nearly the same from frame to frame; taking the keys and values from
an anchor moves the edit by 3.2 levels (of 255), against 65 between the edit and the source,
though zeroing attn1 moves it by 26.5. Scaling attn1's query and key weights 4x / 8x (entropy
0.35 / 0.07, sharper than a trained model's) makes cross-frame attention move the edit by 21 /
26 levels, and still leaves the warp error at 0.98 / 0.96x: a random UNet's flicker comes from
its convolutions, not its attention. Measuring it needs trained attention on real clips.

Keyframes with ``pixels=bilateral`` come out far below the source's own warp error here
(0.23x on wolf, 0.20x on dog): the best affine colour map from a source frame to
tiny-random's edit nearly flattens it (the frames' standard deviation falls from 69 to 9
levels on wolf), and a flat clip is steady. The row shows the mechanism runs on real clips,
not that it edits them well; tools/toy_video_table.py measures that.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

MECHANISMS = {
    "independent": {},
    "cross-frame (first)": {"cross_frame": {"mode": "first"}},
    "cross-frame (sparse-causal)": {"cross_frame": {"mode": "sparse_causal"}},
    "flow propagation": {"flow_propagation": {"strength": 0.5, "start": 0.2, "end": 0.8}},
    "keyframes + flow": {"keyframes": {"every": 4, "propagation": "flow"}},
    "keyframes + bilateral": {"keyframes": {"every": 4, "pixels": "bilateral"}},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--clips", nargs="*", default=["wolf", "dog"])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--window", type=int, default=8)
    a = p.parse_args()

    from videdit import edit_video, io, load_model
    from videdit.metrics.temporal import flicker, warp_error
    from videdit.video.flow import compute_flows

    cases = {Path(c["clip"]).stem: c for c in json.loads((DATA / "cases.json").read_text())["cases"]}
    model = load_model(a.model)
    print(f"model={a.model} frames={a.frames} size={a.size} steps={a.steps} guidance={a.guidance} window={a.window}")
    print(f"{'clip':<6}{'mechanism':<30}{'warp err':>10}{'source':>9}{'ratio':>8}{'vs indep.':>11}{'flicker':>9}{'s':>7}")
    for clip in a.clips:
        case = cases[clip]
        path = DATA / case["clip"]
        read = io.ReadOptions(max_frames=a.frames, size=a.size)
        source, _ = io.read_clip(path, read)
        flows = compute_flows(source)                  # the source's flow, once for every mechanism
        source_error = warp_error(source, flows)
        independent = None
        for name, temporal in MECHANISMS.items():
            t = time.perf_counter()
            res = edit_video(path, source_prompt=case["source"], target_prompt=case["target"][0], model=model,
                             steps=a.steps, guidance=a.guidance, read=read, window=a.window, temporal=temporal,
                             use_cache=False)
            seconds = time.perf_counter() - t
            edited = np.stack([cv2.resize(f, source.shape[2:0:-1], interpolation=cv2.INTER_AREA) for f in res.frames])
            err = warp_error(edited, flows)
            if name == "independent":
                independent = err
            versus = f"{err / independent:>11.3f}" if independent else f"{'-':>11}"
            print(f"{clip:<6}{name:<30}{err:>10.2f}{source_error:>9.2f}{err / source_error:>8.2f}{versus}"
                  f"{flicker(edited, source):>9.2f}{seconds:>7.1f}")


if __name__ == "__main__":
    main()
