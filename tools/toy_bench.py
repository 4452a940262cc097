"""Load time of the toy model and seconds of a 25-step single-frame edit, each in a fresh
process, side by side with diffusers' own ``StableDiffusionPipeline.from_pretrained`` of the
same directory as the baseline (the ratio column).

    python tools/toy_bench.py --repeats 3

Issue 3's targets on this CPU: the model loads in under 2 s, a 25-step edit of one frame
(invert + regenerate, 64x64) takes under 5 s. Times are the median of ``--repeats`` runs;
the first line of each process (imports) is reported apart, since a CLI run pays it once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "videdit" / "toy" / "model"

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np, torch
import videdit
from videdit import edit_image, load_model
from videdit.toy import sample_scene
t1 = time.perf_counter()
what, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
out = {"import_s": t1 - t0}
if what == "diffusers":
    from diffusers import StableDiffusionPipeline
    t = time.perf_counter()
    StableDiffusionPipeline.from_pretrained(sys.argv[3], safety_checker=None, requires_safety_checker=False)
    out["load_s"] = time.perf_counter() - t
else:
    t = time.perf_counter()
    model = load_model("toy")
    out["load_s"] = time.perf_counter() - t
    scene = sample_scene(3)
    target = scene.caption.replace(scene.objects[0].colour, "blue" if scene.objects[0].colour != "blue" else "red")
    t = time.perf_counter()
    edit_image(scene.image, source_prompt=scene.caption, target_prompt=target, model=model, steps=25, guidance=4.0,
               editor=what, use_cache=False)
    out["edit_s"] = time.perf_counter() - t
print(json.dumps(out))
"""


def run(what: str, threads: int) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, what, str(threads), str(MODEL)], capture_output=True,
                         text=True, cwd=ROOT)
    if res.returncode:
        raise SystemExit(f"{what} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    rows = {what: [run(what, a.threads) for _ in range(a.repeats)]
            for what in ("diffusers", "plain", "prompt_to_prompt")}
    med = {w: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for w, runs in rows.items()}
    base = med["diffusers"]["load_s"]
    print(f"toy model ({MODEL.relative_to(ROOT)}), {a.threads} torch threads, median of {a.repeats} fresh processes")
    print(f"{'what':<52}{'import s':>9}{'load s':>8}{'vs diffusers':>13}{'edit s':>8}")
    print(f"{'diffusers StableDiffusionPipeline.from_pretrained':<52}{med['diffusers']['import_s']:>9.2f}"
          f"{base:>8.2f}{1:>13.2f}{'':>8}")
    for w in ("plain", "prompt_to_prompt"):
        m = med[w]
        print(f"{'videdit load_model + 25-step edit, ' + w:<52}{m['import_s']:>9.2f}{m['load_s']:>8.2f}"
              f"{m['load_s'] / base:>13.2f}{m['edit_s']:>8.2f}")


if __name__ == "__main__":
    main()
