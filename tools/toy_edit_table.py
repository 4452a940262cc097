"""Inversion x editor on the toy model, for colour and shape edits of world scenes, scored
against ground truth: edit success rate, object IoU, background PSNR.

    python tools/toy_edit_table.py --scenes 6 --steps 25 --guidance 4

Each scene has one object; the colour edit asks for the next palette colour, the shape edit
for the next shape, in the caption. Success: the largest detected object has the asked
colour (colour edit) or shape (shape edit). IoU: the detected object against the source
object's mask (layout kept). Background PSNR: outside the source object (grown 2 px), edit
against source.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import numpy as np

INVERSIONS = ["ddim", "npi", "direct", "ddpm", "edict"]
EDITORS = ["plain", "prompt_to_prompt", "plug_and_play", "masactrl", "diffedit"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=6)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--inversions", nargs="*", default=INVERSIONS)
    p.add_argument("--editors", nargs="*", default=EDITORS)
    a = p.parse_args()

    from videdit import edit_image, load_model
    from videdit.toy import OBJECT_COLOURS, SHAPES, caption_for, sample_scene
    from videdit.toy.scores import background_psnr, detect_objects, mask_iou

    model = load_model("toy")
    rng = np.random.default_rng(a.seed)
    scenes = []
    while len(scenes) < a.scenes:
        s = sample_scene(rng)
        if len(s.objects) == 1:
            scenes.append(s)
    colours, shapes = list(OBJECT_COLOURS), list(SHAPES)

    def target(scene, kind):
        o = scene.objects[0]
        if kind == "colour":
            o = dataclasses.replace(o, colour=colours[(colours.index(o.colour) + 1) % len(colours)])
        else:
            o = dataclasses.replace(o, shape=shapes[(shapes.index(o.shape) + 1) % len(shapes)])
        return o, caption_for((o,), scene.background)

    cache = tempfile.mkdtemp(prefix="videdit-toy-table-")
    print(f"toy model, {a.scenes} one-object scenes, {a.steps} steps, guidance {a.guidance}")
    print(f"{'inversion':<10}{'editor':<18}{'colour ok':>10}{'IoU':>6}{'bg PSNR':>9}"
          f"{'shape ok':>10}{'IoU':>6}{'bg PSNR':>9}{'s':>7}")
    for inv in a.inversions:
        for ed in a.editors:
            t, cells = time.perf_counter(), []
            for kind in ("colour", "shape"):
                ok, ious, psnrs = [], [], []
                for scene in scenes:
                    obj, prompt = target(scene, kind)
                    out = edit_image(scene.image, source_prompt=scene.caption, target_prompt=prompt, model=model,
                                     steps=a.steps, guidance=a.guidance, inversion=inv, editor=ed, cache_dir=cache)
                    found = detect_objects(out)
                    ok.append(bool(found) and (found[0].colour == obj.colour if kind == "colour"
                                                else found[0].shape == obj.shape))
                    ious.append(mask_iou(found[0].mask, scene.masks[0]) if found else 0.0)
                    psnrs.append(min(background_psnr(out, scene.image, scene.masks, dilate=2), 60.0))
                cells.append((np.mean(ok), np.mean(ious), np.mean(psnrs)))
            (c_ok, c_iou, c_p), (s_ok, s_iou, s_p) = cells
            print(f"{inv:<10}{ed:<18}{c_ok:>10.0%}{c_iou:>6.2f}{c_p:>9.1f}{s_ok:>10.0%}{s_iou:>6.2f}{s_p:>9.1f}"
                  f"{time.perf_counter() - t:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
