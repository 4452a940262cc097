"""FateZero's presets on the toy model's moving-shape clips (16 frames, windows of 8, 25 steps,
guidance 4): frames whose colour edit succeeded, warp error along the ground-truth flow as a
ratio to the source clip's, and UNet evaluations per frame (inversion and edit).

    python tools/toy_fatezero.py --clips 4

The toy model's latents are 16x16 and its UNet 64 and 128 channels wide: FateZero's <= 32x32 of
SD's 64x64 latents and >= 640 of its 320/640/1280 channels scale to max_tokens 64 and
min_channels 128. Rows: per-frame prompt-to-prompt (refinement, no temporal module),
configs/fatezero.yaml, the same with the word swap (-E mode=replace), configs/fatezero-replay.yaml.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("translate", "scale", "rotate", "occlude")


def preset(name: str) -> dict:
    values = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    values.pop("window", None)
    values.pop("model", None)   # the toy model in its place
    return values


def runs() -> dict[str, dict]:
    fatezero = preset("fatezero")
    fatezero["inversion_params"] = {**fatezero["inversion_params"], "min_channels": 128, "max_tokens": 64}
    return {"per-frame prompt_to_prompt": dict(inversion="ddim", editor="prompt_to_prompt",
                                               editor_params={"mode": "refine"}),
            "fatezero": fatezero,
            "fatezero, mode=replace": {**fatezero, "editor_params": {**fatezero["editor_params"], "mode": "replace"}},
            "fatezero-replay": preset("fatezero-replay")}


def main() -> None:
    from videdit.metrics.temporal import warp_error
    from videdit.models import load_model
    from videdit.pipeline import edit_video
    from videdit.toy import sample_clip
    from videdit.toy.scores import clip_flows, clip_frame_success, recoloured

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=4)
    args = p.parse_args()
    toy = load_model("toy")
    evals: list[int] = []
    handle = toy.unet.register_forward_pre_hook(
        lambda m, a, k: evals.append((a[0] if a else k["sample"]).shape[0]), with_kwargs=True)
    rows: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runs()}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.clips):
            clip = sample_clip(np.random.default_rng(seed), KINDS[seed % 4], 16)
            folder = Path(tmp) / str(seed)
            folder.mkdir()
            for t, f in enumerate(clip.frames):
                cv2.imwrite(str(folder / f"{t:04d}.png"), f[..., ::-1])
            prompt, colour = recoloured(clip)
            gt, n = clip_flows(clip), len(clip.frames)
            source = warp_error(clip.frames, gt)
            for name, settings in runs().items():
                evals.clear()
                frames = edit_video(folder, source_prompt=clip.caption, target_prompt=prompt, model=toy, window=8,
                                    use_cache=False, **{**settings, "steps": 25, "guidance": 4.0}).frames
                edited = float(np.mean([clip_frame_success(f, clip, t, colour) for t, f in enumerate(frames)]))
                rows[name].append((edited, warp_error(frames, gt) / source, sum(evals) / n))
                print(f"clip {seed} ({KINDS[seed % 4]}) {name}: edited {edited:.2f}, warp error / source "
                      f"{rows[name][-1][1]:.2f}", flush=True)
    handle.remove()
    print("\n| preset | frames edited | warp error / source's | UNet evaluations per frame |\n|---|---|---|---|")
    for name, r in rows.items():
        a = np.array(r)
        print(f"| {name} | {a[:, 0].mean():.2f} | {a[:, 1].mean():.2f} | {a[:, 2].mean():.0f} |")


if __name__ == "__main__":
    main()
