"""configs/rerender.yaml (its Ebsynth stage, and with propagate: warp) against independent editing at
its settings and configs/rerender-pull.yaml on the toy world's moving-shape clips: warp error along the
ground-truth flow (x the source's), frames whose colour edit succeeded, UNet rows per output frame
(one frame under one prompt; a guided step is two; inversion included), seconds per clip.

    PYTHONPATH=. python tools/rerender_toy.py [--clips 4] [--frames 16] [--ebsynth 2 2] [--rows warp ...]

The toy model has no ControlNet: the preset's keyframes run here without one. Measured (4 clips, 16 frames,
CPU shared by other jobs): independent 11.29x / 33% / 30 rows / 42 s; rerender.yaml (Ebsynth stage,
official 12 x 6 iterations) 10.19x / 34% / 13.1 / 152 s, at --ebsynth 2 2 11.31x / 36% / 13.1 /
61 s; propagate: warp 13.26x / 33% / 13.1 / 37 s. Earlier (unloaded CPU): rerender-pull.yaml
42.61x / 28% / 150 / 102 s. The toy model is trained for guidance 4; at the presets' 7.5 few colour
edits succeed with or without a module.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

from bench import scratch_dir   # tools/bench.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("translate", "scale", "rotate", "occlude")


def main() -> None:
    from videdit import edit_video, load_model
    from videdit.io import ReadOptions
    from videdit.metrics.temporal import warp_error
    from videdit.toy import sample_clip
    from videdit.toy.scores import clip_flows, clip_frame_success, recoloured

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--ebsynth", type=int, nargs=2, metavar=("SEARCH_VOTE", "PATCHMATCH"),
                   help="the Ebsynth stage's iterations per level (default: the official 12 and 6)")
    p.add_argument("--rows", nargs="+", metavar="TEXT", help="only the rows whose name contains one of these")
    a = p.parse_args()
    model = load_model("toy")
    evals = [0]
    model.unet.register_forward_hook(lambda m, args, out: evals.__setitem__(0, evals[0] + args[0].shape[0]))
    # the toy model has no ControlNet: the preset's keyframes run without it here
    rerender = {k: v for k, v in yaml.safe_load((ROOT / "configs" / "rerender.yaml").read_text()).items()
                if k not in ("control", "controlnet")}
    options = rerender["temporal"]["rerender"]
    if a.ebsynth:
        options["ebsynth"] = {"search_vote_iters": a.ebsynth[0], "patchmatch_iters": a.ebsynth[1]}
    warp = {**rerender, "temporal": {"rerender": {**options, "propagate": "warp"}}}
    rows = {"independent (rerender.yaml, no module)": {k: v for k, v in rerender.items() if k != "temporal"},
            "configs/rerender.yaml (Ebsynth stage)": rerender,
            "rerender.yaml, propagate: warp": warp,
            "configs/rerender-pull.yaml": yaml.safe_load((ROOT / "configs" / "rerender-pull.yaml").read_text())}
    rows = {k: v for k, v in rows.items() if not a.rows or any(r in k for r in a.rows)}
    scores: dict[str, list] = {name: [] for name in rows}
    tmp = Path(scratch_dir("videdit-rerender-toy-"))
    for i in range(a.clips):
        clip = sample_clip(np.random.default_rng(i), KINDS[i % len(KINDS)], a.frames)
        folder = tmp / f"clip{i}"
        folder.mkdir()
        for t, f in enumerate(clip.frames):
            cv2.imwrite(str(folder / f"{t:04d}.png"), f[..., ::-1])
        gt, (prompt, colour) = clip_flows(clip), recoloured(clip)
        source = warp_error(clip.frames, gt)
        for name, settings in rows.items():
            evals[0], t0 = 0, time.perf_counter()
            out = edit_video(folder, source_prompt=clip.caption, target_prompt=prompt, model=model, use_cache=False,
                             read=ReadOptions(size="source"), **settings).frames
            ok = np.mean([clip_frame_success(f, clip, t, colour) for t, f in enumerate(out)])
            scores[name].append((warp_error(out, gt) / source, ok, evals[0] / a.frames, time.perf_counter() - t0))
            print(f"clip {i} {name}: " + " ".join(f"{v:.2f}" for v in scores[name][-1]), flush=True)
    print(f"toy model, {a.clips} clips ({', '.join(KINDS[:a.clips])}), {a.frames} frames each")
    print(f"{'':42}{'warp err x source':>18}{'frames ok':>11}{'UNet rows/frame':>18}{'s/clip':>8}")
    for name, rows_ in scores.items():
        r = np.array(rows_)
        print(f"{name:42}{r[:, 0].mean():>18.2f}{r[:, 1].mean():>11.0%}{r[:, 2].mean():>18.2f}{r[:, 3].mean():>8.1f}")


if __name__ == "__main__":
    main()
