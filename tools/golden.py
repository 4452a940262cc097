"""Same results before and after a change: a fixed matrix of edits, hashed bit for bit.

    python tools/golden.py record -o now.json                 # this checkout
    python tools/golden.py record -o then.json --at HEAD~3    # an earlier commit (a git worktree)
    python tools/golden.py compare then.json now.json         # exit 1 on any difference

The matrix: every inversion with ``plain`` and ``prompt_to_prompt``; every editor after
``ddim``; every temporal module and pixel stage, and every preset in ``configs/``, after
``direct`` + ``prompt_to_prompt`` (presets with their own inversion and editor too);
on tiny-random and on the toy model, 8 frames of ``samples/red-circle.mp4`` at 64x64 in one
8-frame window, UNet batches of 4, 5 steps. Each case records a hash of the latents the VAE
decoded and of the output frames (uint8), so any change to a single bit shows.
Presets are read as ``videdit edit --config NAME`` reads them, at 5 steps, each ControlNet the
model's own (tiny-random's random one, the toy's canny one). Besides that reading it goes only
through the public API (``videdit.edit_video``, ``videdit.load_model`` and
``Model.decode_latents``), so it runs against commits before and after an API change.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(os.environ.get("VIDEDIT_GOLDEN_ROOT") or Path(__file__).resolve().parents[1])   # --at: that tree
CLIP = ROOT / "samples" / "red-circle.mp4"
SOURCE, TARGET = "a red circle on a gray background", "a blue circle on a gray background"
STEPS, FRAMES, SIZE, WINDOW, BATCH = 5, 8, 64, 8, 4

INVERSIONS = ("ddim", "null_text", "npi", "proxedit", "fixed_point", "aidi", "edict", "bdia", "direct", "ddpm",
              "pix2pix_zero")
EDITORS = ("plain", "prompt_to_prompt", "plug_and_play", "masactrl", "cross_image", "blended", "diffedit",
           "differential", "sega")
# temporal modules and frame stages (the names are those of the first recording, whose commit spelled
# some of these cases differently: cross_frame mode keyframes and keyframes:propagation=...,pixels=...)
PLUS = {"scope": "window", "features": "keys"}   # tokenflow as videdit ran it when recorded (tokenflow-plus)


def _for_this_tree(temporal: dict) -> dict:
    """``temporal`` as a tree from before tokenflow's ``scope`` (the official TokenFlow came in
    then) spells it: there tokenflow always ran as PLUS, and takes no such options."""
    from videdit.video import TEMPORAL as modules

    known = {f.name for f in dataclasses.fields(modules["tokenflow"].config)}
    if "scope" in known or "tokenflow" not in temporal:
        return temporal
    return {**temporal, "tokenflow": {k: v for k, v in temporal["tokenflow"].items() if k not in PLUS}}

TEMPORAL = {
    "cross_frame_first": {"cross_frame": {"mode": "first"}},
    "cross_frame_sparse_causal": {"cross_frame": {"mode": "sparse_causal"}},
    "cross_frame_keyframes": {"keyframes": {}},
    "keyframes_tokenflow": {"keyframes": {"every": 3}, "tokenflow": PLUS},
    "keyframes_flow": {"keyframes": {"every": 3}, "keyframe_flow": {}},
    "keyframes_flow_warp": {"keyframes": {"every": 3}, "keyframe_flow": {}, "pixels_warp": {}},
    "keyframes_guided": {"keyframes": {"every": 3}, "tokenflow": PLUS, "pixels_guided": {}},
    "keyframes_bilateral": {"keyframes": {"every": 3}, "pixels_bilateral": {}},
    "keyframes_bilateral_window": {"keyframes": {"every": 3}, "pixels_bilateral": {"scope": "window"}},
    "keyframes_change": {"keyframes": {"select": "change", "every": 3}, "tokenflow": PLUS},
    "flow_propagation": {"flow_propagation": {}},
    "flow_propagation_latent": {"flow_propagation": {"target": "latent", "strength": 0.8}},
}


def _mask() -> np.ndarray:
    m = np.zeros((SIZE, SIZE), np.float32)
    m[:, : SIZE // 2] = 1
    return m


def cases() -> dict[str, dict]:
    """name -> edit_video keyword arguments (without model, input and the shared ones)."""
    editor_params = {"blended": {"mask": _mask()}, "differential": {"mask": _mask() * 0.75},
                     "sega": {"concepts": [{"text": "blue", "scale": 5.0}], "warmup": 1}}   # acting in 5 steps
    out: dict[str, dict] = {}
    for inv in INVERSIONS:
        for ed in ("plain", "prompt_to_prompt"):
            out[f"inv/{inv}/{ed}"] = dict(inversion=inv, editor=ed)
    for ed in EDITORS:
        out[f"edit/ddim/{ed}"] = dict(inversion="ddim", editor=ed, editor_params=editor_params.get(ed, {}))
    out["edit/ddim/plain+keep_background"] = dict(inversion="ddim", editor="plain", keep_background=True)
    for name, temporal in TEMPORAL.items():
        out[f"temporal/{name}"] = dict(inversion="direct", editor="prompt_to_prompt", temporal=temporal)
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        kw = _preset(path)
        if kw.get("editor") in editor_params and not (kw.get("editor_params") or {}).get("mask"):
            kw["editor_params"] = {**(kw.get("editor_params") or {}), **editor_params[kw["editor"]]}
        out[f"preset/{path.stem}"] = kw
        out[f"preset/{path.stem}/direct+p2p"] = {**kw, "inversion": "direct", "inversion_params": {},
                                                 "editor": "prompt_to_prompt", "editor_params": {}}
    return out


def _preset(path: Path) -> dict:
    """configs/NAME.yaml as ``videdit edit --config`` reads it at ``STEPS`` steps (the prompts with
    its suffix, ControlNets, token merging, strength, seed: every option of the edit), less what
    :func:`record` sets; a ControlNet on a condition read by a detector runs on canny edges instead.
    A tree whose command line has no ``edit_kwargs`` gets the keys its presets held then."""
    from videdit import cli

    if not hasattr(cli, "edit_kwargs"):
        preset = yaml.safe_load(path.read_text()) or {}
        return {k: v for k, v in preset.items() if k in ("inversion", "inversion_params", "editor", "editor_params",
                                                        "temporal", "guidance", "keep_background")}
    argv = ["edit", str(CLIP), "-o", "unused.mp4", "-s", SOURCE, "-t", TARGET, "--config", str(path),
            "--steps", str(STEPS)]
    values = yaml.safe_load(path.read_text()) or {}
    if values.get("controlnet") and not values.get("control"):   # pose or depth maps the user gives
        argv += ["--control", "canny"] * len(values["controlnet"])
    kw = cli.edit_kwargs(cli._with_config(cli.build_parser(), argv))
    for key in ("model", "read", "window", "batch_size", "use_cache", "cache_dir", "preview", "overwrite",
                "progress", "device", "dtype", "max_tokens"):
        del kw[key]
    return kw


CONTROLNETS = {"tiny-random": "tiny-random", "toy": "toy-canny"}   # each model's ControlNet, in a preset's one's place


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes()).hexdigest()[:16]


def record(models: list[str], only: str | None) -> dict:
    import torch

    import videdit
    from videdit import io

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip"
        frames, _ = io.read_clip(CLIP, io.ReadOptions(size=(SIZE, SIZE), max_frames=FRAMES))
        _write_pngs(clip, frames)
        for model_name in models:
            model = videdit.load_model(model_name, device="cpu")
            decoded: list = []
            decode = model.decode_latents

            def capture(z, *a, **k):
                decoded.append(z.detach().float().cpu().numpy().copy())
                return decode(z, *a, **k)

            model.decode_latents = capture
            for name, kw in cases().items():
                if only and only not in name:
                    continue
                decoded.clear()
                kw = {"steps": STEPS, "guidance": 7.5, "source_prompt": SOURCE, "target_prompt": TARGET, **kw}
                if kw.get("control"):
                    kw["control"] = [dataclasses.replace(c, controlnet=CONTROLNETS[model_name]) for c in kw["control"]]
                if kw.get("temporal"):
                    kw["temporal"] = _for_this_tree(kw["temporal"])
                if isinstance(kw.get("editor_params", {}).get("mask"), np.ndarray):
                    kw["editor_params"] = {**kw["editor_params"], "mask": torch.from_numpy(kw["editor_params"]["mask"])}
                t0 = time.perf_counter()
                key = f"{model_name}/{name}"
                try:
                    torch.manual_seed(0)
                    res = videdit.edit_video(clip, None, model=model,
                                             window=WINDOW, batch_size=BATCH, use_cache=False,
                                             read=io.ReadOptions(size="source"), **kw)   # the clip's SIZE
                    results[key] = {"latents": _digest(np.concatenate(decoded)) if decoded else None,
                                    "frames": _digest(res.frames), "mean": round(float(res.frames.mean()), 3)}
                except Exception as e:   # recorded: a case that fails must fail the same way
                    results[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
                print(f"{key:60s} {time.perf_counter() - t0:5.1f}s {results[key]}", file=sys.stderr, flush=True)
    return results


def _write_pngs(folder: Path, frames: np.ndarray) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:05d}.png")


def compare(a: dict, b: dict) -> int:
    """Print the cases that differ; 0 when every case in both is the same."""
    differ = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    for k in differ:
        print(f"{k}\n  before: {a.get(k)}\n  after:  {b.get(k)}")
    print(f"{len(set(a) & set(b)) - len([k for k in differ if k in a and k in b])} of {len(set(a) | set(b))} cases "
          f"the same; {len(differ)} differ or are missing on one side")
    return 1 if differ else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="run the matrix and write its hashes")
    r.add_argument("-o", "--output", type=Path, required=True)
    r.add_argument("--models", nargs="+", default=["tiny-random", "toy"])
    r.add_argument("--only", help="run only the cases whose name contains this")
    r.add_argument("--at", help="record at this git commit instead (checked out in a temporary worktree)")
    c = sub.add_parser("compare", help="compare two recordings")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = p.parse_args(argv)
    if args.command == "compare":
        return compare(json.loads(args.before.read_text()), json.loads(args.after.read_text()))
    if args.at:
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp) / "tree"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.at], check=True)
            try:
                cmd = [sys.executable, str(Path(__file__).resolve()), "record", "-o", str(args.output.resolve()),
                       "--models", *args.models, *(["--only", args.only] if args.only else [])]
                env = {**os.environ, "PYTHONPATH": str(tree), "VIDEDIT_GOLDEN_ROOT": str(tree)}
                return subprocess.run(cmd, env=env).returncode
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)
    results = record(args.models, args.only)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"{len(results)} cases -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
