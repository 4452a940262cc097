"""Reconstruction table of every registered inversion, in one run.

For each inversion: the relative latent reconstruction error ||z0_hat - z0|| / ||z0|| of the
inversion's own reconstruction (plain editor, target prompt = source prompt) at guidance 1
and at guidance 7.5, the UNet evaluations per frame it spent inverting, the extra
evaluations it adds to each editing step, and seconds (inversion + reconstruction).

    python tools/inversion_table.py --model tiny-random --steps 50
    python tools/inversion_table.py --model toy --steps 50

tiny-random: two real frames (wolf.mp4) at 64x64; its noise predictions are not smooth in t,
so only the exact methods are meaningful there. toy: four world scenes with their captions.
Methods that invert at guidance 1 by default get a second row, "(inv. g)", inverted at the
guidance they are reconstructed with.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def frames_and_prompts(model_name: str, n: int):
    if model_name == "toy":
        from videdit.toy.world import sample_scenes

        scenes = sample_scenes(seed=1234, n=n)
        return [(s.image[None], s.caption) for s in scenes]
    from videdit import io

    clip = ROOT.parent / "shared" / "data" / "videos" / "wolf.mp4"
    frames, _ = io.read_clip(clip, io.ReadOptions(size=(64, 64), max_frames=n))
    return [(np.ascontiguousarray(frames), "a wolf in a forest")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--frames", type=int, default=2, help="frames (tiny-random) or scenes (toy)")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--only", nargs="*", help="only these inversions")
    a = p.parse_args()

    from videdit.inversion import INVERSIONS
    from videdit.models import load_model
    from videdit.pipeline import EditSettings, invert_frames, reconstruct

    model = load_model(a.model, dtype=a.dtype)
    data = frames_and_prompts(a.model, 4 if a.model == "toy" else a.frames)
    print(f"model={a.model} steps={a.steps} dtype={a.dtype} inputs={sum(len(f) for f, _ in data)} frames")
    print(f"{'inversion':<20}{'err g=1':>10}{'err g=7.5':>11}{'UNet evals':>12}{'+evals/step':>12}{'seconds':>9}")
    rows = []
    for name in a.only or sorted(INVERSIONS):
        rows.append((name, name, lambda g: {}))
        fields = {f.name: f.default for f in dataclasses.fields(INVERSIONS[name].config)}
        if fields.get("guidance") == 1.0:  # inverts at guidance 1 by default: also invert at the edit's guidance
            rows.append((f"{name} (inv. g)", name, lambda g: {"guidance": g}))
    for label, name, params in rows:
        errs, evals, extra, seconds = [], 0, 0, 0.0
        for g in (1.0, 7.5):
            total = 0.0
            for frames, prompt in data:
                s = EditSettings(source_prompt=prompt, target_prompt=prompt, steps=a.steps, guidance=g, inversion=name,
                                 inversion_params=params(g))
                t = time.perf_counter()
                inv = invert_frames(model, frames, s)
                z = reconstruct(model, inv, s)
                seconds += time.perf_counter() - t
                total += float((z - inv.source).norm() / inv.source.norm())
                evals, extra = inv.unet_evals, inv.evals_per_step
            errs.append(total / len(data))
        print(f"{label:<20}{errs[0]:>10.2e}{errs[1]:>11.2e}{evals:>12d}{extra:>12d}{seconds:>9.1f}")


if __name__ == "__main__":
    main()
