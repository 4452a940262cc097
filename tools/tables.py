"""Quality tables, side by side in one run; one subcommand per table:

    python tools/tables.py inversions --model tiny-random --steps 50
    python tools/tables.py inversions --model toy --steps 50
    python tools/tables.py toy-edits --scenes 6 --steps 25 --guidance 4
    python tools/tables.py toy-video --clips 4 --frames 16 --steps 25 --guidance 4 [--keep-background 0.3] [--tome 0.5]
    python tools/tables.py temporal --model tiny-random --frames 16 --size 128 --steps 10
    python tools/tables.py methods --scenes 4 --steps 25 --guidance 4

inversions: per registered inversion, the relative latent reconstruction error
||z0_hat - z0|| / ||z0|| of its own reconstruction (plain editor, target prompt = source
prompt) at guidance 1 and 7.5, the UNet evaluations per frame it spent inverting, the extra
evaluations it adds to each editing step, and seconds. tiny-random: two real frames
(wolf.mp4) at 64x64; its noise predictions are not smooth in t, so only the exact methods are
meaningful there. toy: four world scenes with their captions. Methods that invert at guidance
1 by default get a second row, "(inv. g)", inverted at the guidance they reconstruct with.

toy-edits: inversion x editor on the toy model, colour and shape edits of one-object world
scenes, scored against ground truth. The colour edit asks for the next palette colour, the
shape edit for the next shape, in the caption. Success: the largest detected object has the
asked colour or shape. IoU: the detected object against the source object's mask (layout
kept). Background PSNR: outside the source object (grown 2 px), edit against source.

methods: every registered inversion (after it, prompt_to_prompt edits) and editor (after ddim)
on the toy model, at its reference's defaults (its config's defaults and strength; the
table's steps and guidance, since the toy model is sampled at guidance 4), then once more
with each videdit improvement (an option marked ``improved``: its ``better`` value). Colour
and shape edits of one-object scenes, scored as toy-edits does. Editors that need an input
get the scene's: a mask (the object grown by 2 px; white = change), the concept word (sega,
ledits), the scene rendered with the asked object (cross_image's appearance image).

toy-video and temporal: warp error of each temporal mechanism (``MECHANISMS``) against
independent per-frame editing, each also as a ratio to the source clip's own warp error
(``videdit.metrics.temporal.warp_error``: frame t+1 warped back to t, mean absolute error,
0-255, over pixels visible in both).

- toy-video: colour edits of the toy world's moving-shape clips (kinds translate, scale,
  rotate, occlude; seeded; 64x64), along the clips' *ground-truth* flow and occlusion masks,
  so the source's own error is only the resampling floor of anti-aliased edges. The edit
  recolours the front object to the next palette colour no object of the clip has. A frame
  succeeds when the front object's ground-truth visible pixels have the asked colour and, in
  one-object clips, the detected object keeps the source's shape and covers its mask (IoU >=
  0.5), or, in occlusion clips, the back object's visible pixels keep their colour. The first
  row is the clip rendered again with the asked colour, the floor a perfect edit reaches (a
  new colour that stands out more from the background raises the edges' resampling error:
  the scale clip of seed 5, purple to orange on gray, 1.6x the source's). ``check`` counts the
  clips that pass the issue's test: warp error within 1.5x the source's, at least 2x below
  independent editing's on the same clip, and every frame edited.
- temporal: real clips (prompts from ../shared/data/cases.json) along the *source* clip's DIS
  flow (``--flow raft --flow-param raft_weights=PATH``: RAFT's, for the scores and every
  mechanism's flow alike), with flicker. With tiny-random the edits mean nothing; the table measures only how
  much each mechanism holds frames together. Cross-frame attention comes out at
  0.995-1.001x of independent editing there and no choice of anchors does better: its random
  self-attention is near uniform, so a random UNet's flicker comes from its convolutions, not
  its attention (measuring cross-frame attention needs trained attention on real clips).
  Keyframes + bilateral pixels come out far below the source's own error (0.23x on wolf): the
  best affine colour map from a source frame to tiny-random's edit nearly flattens it, and a
  flat clip is steady; the row shows the mechanism runs on real clips, not that it edits
  them well (toy-video measures that).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import SHARED, WOLF, Table, subcommands   # tools/bench.py, beside this script
from videdit.cli import parse_param     # NAME=VALUE with a YAML value, as videdit's -I reads it

# The temporal table's mechanisms, on real clips; toy-video adds the other pixel stages of keyframes, a finer
# bilateral grid, and TokenFlow propagation (it needs an editor with a source branch).
MECHANISMS = {
    "independent": {},
    "cross-frame (first)": {"cross_frame": {"mode": "first"}},
    "cross-frame (sparse-causal)": {"cross_frame": {"mode": "sparse_causal"}},
    "flow propagation": {"flow_propagation": {"strength": 0.5, "start": 0.2, "end": 0.8}},
    "keyframes + flow": {"keyframes": {"every": 4}, "keyframe_flow": {}},
    "keyframes + bilateral": {"keyframes": {"every": 4}, "pixels_bilateral": {}},
    "keyframes + flow + pixels": {"keyframes": {"every": 4}, "keyframe_flow": {}, "pixels_warp": {}},
    "keyframes + flow + guided": {"keyframes": {"every": 4}, "keyframe_flow": {}, "pixels_guided": {}},
    "keyframes + bilateral, cell 0.5": {"keyframes": {"every": 4}, "pixels_bilateral": {"cell": 0.5}},
    "keyframes + tokenflow": {"keyframes": {"every": 4}, "tokenflow": {"scope": "window", "features": "keys"}},
    "tokenflow (official)": {"tokenflow": {}},
    "tokenflow-plus": {"keyframes": {"every": 8}, "tokenflow": {"scope": "window", "features": "keys"}},
}
WHOLE_CLIP = {"tokenflow (official)"}   # all the clip's pivots attend jointly: the clip is one window
REAL_CLIP_MECHANISMS = list(MECHANISMS)[:6]


# -- shared helpers ----------------------------------------------------------------------------

def versus(err: float, independent: float | None, digits: int = 3) -> str:
    """``err`` as a multiple of independent editing's error, or "-" before that row."""
    return f"{err / independent:.{digits}f}" if independent else "-"


def one_object_scenes(seed: int, n: int) -> list:
    """The first ``n`` world scenes with one object, from ``seed``."""
    from videdit.toy import sample_scene

    rng, scenes = np.random.default_rng(seed), []
    while len(scenes) < n:
        s = sample_scene(rng)
        if len(s.objects) == 1:
            scenes.append(s)
    return scenes


# -- inversions --------------------------------------------------------------------------------

def inversions(a) -> None:
    from videdit import io
    from videdit.inversion import INVERSIONS
    from videdit.models import load_model
    from videdit.pipeline import EditSettings, invert_frames, reconstruct
    from videdit.toy.world import sample_scenes

    model = load_model(a.model, dtype=a.dtype)
    if a.model == "toy":
        data = [(s.image[None], s.caption) for s in sample_scenes(seed=1234, n=4)]
    else:
        frames, _ = io.read_clip(WOLF, io.ReadOptions(size=(64, 64), max_frames=a.frames))
        data = [(np.ascontiguousarray(frames), "a wolf in a forest")]
    print(f"model={a.model} steps={a.steps} dtype={a.dtype} inputs={sum(len(f) for f, _ in data)} frames")
    table = Table(("inversion", "<20"), ("err g=1", ">10.2e"), ("err g=7.5", ">11.2e"), ("UNet evals", ">12d"),
                  ("+evals/step", ">12d"), ("seconds", ">9.1f"))
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
        table.row(label, errs[0], errs[1], evals, extra, seconds)


# -- toy-edits and methods --------------------------------------------------------------------

EDIT_COLUMNS = (("colour ok", ">10.0%"), ("IoU", ">6.2f"), ("bg PSNR", ">9.1f"), ("shape ok", ">10.0%"),
                ("IoU", ">6.2f"), ("bg PSNR", ">9.1f"), ("s", ">7.1f"))


def asked_object(scene, kind: str):
    """The scene's object with the next palette colour (kind "colour") or the next shape, and
    the caption asking for it."""
    from videdit.toy import OBJECT_COLOURS, SHAPES, caption_for

    o = scene.objects[0]
    if kind == "colour":
        colours = list(OBJECT_COLOURS)
        o = dataclasses.replace(o, colour=colours[(colours.index(o.colour) + 1) % len(colours)])
    else:
        shapes = list(SHAPES)
        o = dataclasses.replace(o, shape=shapes[(shapes.index(o.shape) + 1) % len(shapes)])
    return o, caption_for((o,), scene.background)


def edit_scores(scenes, edit) -> list:
    """``edit(scene, obj, prompt, kind) -> image`` on every scene, a colour and a shape edit each:
    [colour success, IoU, background PSNR, shape success, IoU, background PSNR, seconds]."""
    from videdit.toy.scores import background_psnr, detect_objects, mask_iou

    t, cells = time.perf_counter(), []
    for kind in ("colour", "shape"):
        ok, ious, psnrs = [], [], []
        for scene in scenes:
            obj, prompt = asked_object(scene, kind)
            out = edit(scene, obj, prompt, kind)
            found = detect_objects(out)
            ok.append(bool(found) and (found[0].colour == obj.colour if kind == "colour"
                                        else found[0].shape == obj.shape))
            ious.append(mask_iou(found[0].mask, scene.masks[0]) if found else 0.0)
            psnrs.append(min(background_psnr(out, scene.image, scene.masks, dilate=2), 60.0))
        cells += [np.mean(ok), np.mean(ious), np.mean(psnrs)]
    return cells + [time.perf_counter() - t]


def toy_edits(a) -> None:
    from videdit import edit_image, load_model

    model = load_model("toy")
    scenes = one_object_scenes(a.seed, a.scenes)
    cache = tempfile.mkdtemp(prefix="videdit-toy-table-")
    print(f"toy model, {a.scenes} one-object scenes, {a.steps} steps, guidance {a.guidance}")
    table = Table(("inversion", "<10"), ("editor", "<18"), *EDIT_COLUMNS)
    for inv in a.inversions:
        for ed in a.editors:
            table.row(inv, ed, *edit_scores(scenes, lambda scene, obj, prompt, kind: edit_image(
                scene.image, source_prompt=scene.caption, target_prompt=prompt, model=model, steps=a.steps,
                guidance=a.guidance, inversion=inv, editor=ed, cache_dir=cache)))


def _grown(mask: np.ndarray, px: int) -> np.ndarray:
    import cv2

    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)) > 0


def editor_inputs(editor: str, scene, obj, prompt: str, kind: str) -> dict:
    """The options an editor needs from a scene and the asked object: a mask, a concept, an image."""
    from videdit.editing import EDITORS
    from videdit.toy import make_scene

    options = {f.name for f in dataclasses.fields(EDITORS[editor].config)}
    out = {}
    if "mask" in options and editor != "diffedit":   # diffedit finds its own mask
        out["mask"] = _grown(scene.masks[0], 2).astype(np.float32)
    if "concepts" in options:   # sega, ledits
        out["concepts"] = [obj.colour if kind == "colour" else obj.shape]
    if "appearance" in options:
        out["appearance"] = make_scene((obj,), scene.background).image
        out["appearance_prompt"] = prompt
    return out


def methods_rows(only: list[str] | None) -> list[tuple[str, str, str, dict, dict]]:
    """(label, inversion, editor, inversion params, editor params): each method at its defaults,
    then with each of its improvements."""
    from videdit.editing import EDITORS
    from videdit.inversion import INVERSIONS

    rows = []
    for kind, registry in (("inversion", INVERSIONS), ("editor", EDITORS)):
        for name, spec in sorted(registry.items()):
            if only and name not in only:
                continue
            inversion, editor = (name, "prompt_to_prompt") if kind == "inversion" else ("ddim", name)
            rows.append((name, inversion, editor, {}, {}))
            for d in spec.departures():
                if d.kind == "improves":
                    params = {d.option: d.value}
                    rows.append((f"{name} {d.option}={d.value}", inversion, editor,
                                 params if kind == "inversion" else {}, params if kind == "editor" else {}))
    return rows


def methods(a) -> None:
    from videdit import edit_image, load_model
    from videdit.errors import VideditError

    model = load_model("toy")
    scenes = one_object_scenes(a.seed, a.scenes)
    cache = tempfile.mkdtemp(prefix="videdit-methods-table-")
    print(f"toy model, {a.scenes} one-object scenes of seed {a.seed}, {a.steps} steps, guidance {a.guidance}")
    table = Table(("method", "<40"), ("after", "<18"), *EDIT_COLUMNS)
    for label, inversion, editor, inv_params, ed_params in methods_rows(a.only):
        def edit(scene, obj, prompt, kind):
            return edit_image(scene.image, source_prompt=scene.caption, target_prompt=prompt, model=model,
                              steps=a.steps, guidance=a.guidance, inversion=inversion, inversion_params=inv_params,
                              editor=editor, editor_params={**editor_inputs(editor, scene, obj, prompt, kind),
                                                            **ed_params}, cache_dir=cache)

        after = editor if inversion == label.split()[0] else inversion
        try:
            table.row(label, after, *edit_scores(scenes, edit))
        except VideditError as e:   # the method cannot run on the toy model as its reference has it
            print(f"{label:<40}{after:<18}refused: {e}", flush=True)


# -- toy-video ---------------------------------------------------------------------------------

def toy_video(a) -> None:
    import cv2

    from videdit import edit_video, load_model
    from videdit.errors import VideditError
    from videdit.io import ReadOptions
    from videdit.metrics.temporal import warp_error
    from videdit.toy import sample_clip
    from videdit.toy.scores import clip_flows, clip_frame_success, recoloured

    model = load_model(a.model)
    inversion_params = dict(a.inversion_param)
    tmp = Path(tempfile.mkdtemp(prefix="videdit-toy-video-"))
    clips = []
    for i in range(a.clips):
        kind = a.kinds[i % len(a.kinds)]
        clip = sample_clip(np.random.default_rng(a.seed + i), kind, a.frames)
        folder = tmp / f"clip{i}"
        folder.mkdir()
        for t, f in enumerate(clip.frames):
            cv2.imwrite(str(folder / f"{t:04d}.png"), f[..., ::-1])
        gt = clip_flows(clip)
        clips.append((clip, folder, gt, warp_error(clip.frames, gt)))   # the source's own error, once

    print(f"model={a.model} clips={a.clips} ({', '.join(a.kinds)}) frames={a.frames} steps={a.steps} "
          f"guidance={a.guidance} inversion={a.inversion} {inversion_params or ''} editor={a.editor} "
          f"{dict(a.editor_param) or ''} window={a.window} "
          f"keep_background={a.keep_background} tome={a.tome}")
    table = Table(("mechanism", "<36"), ("warp err", ">9.2f"), ("source", ">8.2f"), ("ratio", ">7.2f"),
                  ("vs indep.", ">10"), ("frames ok", ">10.0%"), ("worst clip", ">11.0%"), ("check", ">7"),
                  ("  per clip: warp err x source, x below independent, frames ok", "<62"), ("s", ">6.1f"))
    independent = None
    rows = [("ground-truth recolouring", None)] + [(name, MECHANISMS[name]) for name in a.mechanisms]
    for name, temporal in rows:
        t0, errs, ok, per_clip = time.perf_counter(), [], [], []
        for clip, folder, gt, _ in clips:
            prompt, colour = recoloured(clip)
            if temporal is None:   # the clip rendered again with the asked colour: the floor a perfect edit reaches
                frames = truth(clip, colour)
            else:
                try:
                    frames = edit_video(folder, source_prompt=clip.caption, target_prompt=prompt, model=model,
                                        steps=a.steps, guidance=a.guidance, inversion=a.inversion,
                                        inversion_params=inversion_params, editor=a.editor,
                                        editor_params=dict(a.editor_param),
                                        window=a.frames if name in WHOLE_CLIP else a.window,
                                        temporal=temporal, cache_dir=tmp / "cache",
                                        read=ReadOptions(size="source"),   # the toy clips' own size
                                        keep_background=None if a.keep_background is None
                                        else {"threshold": a.keep_background}, token_merging=a.tome).frames
                except VideditError as e:   # e.g. tokenflow needs an editor with a source branch
                    print(f"{name:<36}not available: {e}".splitlines()[0][:160], flush=True)
                    break
            errs.append(warp_error(frames, gt))
            hits = [clip_frame_success(f, clip, t, colour) for t, f in enumerate(frames)]
            ok += hits
            per_clip.append(float(np.mean(hits)))
        if len(errs) < len(clips):
            continue
        srcs = [c[3] for c in clips]
        if name == "independent":
            independent = errs
        below = [i / e for i, e in zip(independent, errs)] if independent else [float("nan")] * len(errs)
        # the check, per clip: within 1.5x the source's warp error, 2x below independent editing, every
        # frame edited
        clip_rows = list(zip(clips, errs, srcs, below, per_clip))
        check = "-" if not independent or name == "independent" else \
            f"{sum(e / s <= 1.5 and b >= 2 and r == 1 for _, e, s, b, r in clip_rows)}/{len(errs)}"
        err, src = float(np.mean(errs)), float(np.mean(srcs))
        detail = " ".join(f"{c.kind[:5]} {e / s:.1f} {b:.1f} {r:.0%}" for (c, *_), e, s, b, r in clip_rows)
        vs = versus(err, independent and float(np.mean(independent)), digits=2)
        table.row(name, err, src, err / src, vs, float(np.mean(ok)), min(per_clip), check, f"  {detail}",
                  time.perf_counter() - t0)


def truth(clip, colour: str) -> np.ndarray:
    """``clip`` rendered again with its front object in ``colour``: what a perfect edit gives."""
    from videdit.toy.world import render_clip

    front = dataclasses.replace(clip.objects[-1], colour=colour)
    size = clip.frames.shape[1]
    return render_clip((*clip.objects[:-1], front), clip.motions, clip.background, len(clip.frames), size,
                       kind=clip.kind).frames


# -- temporal ----------------------------------------------------------------------------------

FLOW_MAPPING = ("keyframe_flow", "pixels_warp", "pixels_guided", "rerender")   # modules with a flow={...} option


def with_flow(temporal: dict, options: dict) -> dict:
    """A mechanism's temporal modules with FlowConfig ``options`` given to every module that reads a
    flow: a ``flow`` mapping for the keyframe stages and rerender, flow_propagation's own fields."""
    out = {}
    for name, opts in temporal.items():
        opts = dict(opts or {})
        if name in FLOW_MAPPING:
            opts["flow"] = {**dict(opts.get("flow") or {}), **options}
        elif name == "flow_propagation":
            opts.update(options)
        out[name] = opts
    return out


def temporal(a) -> None:
    import cv2

    from videdit import edit_video, io, load_model
    from videdit.metrics.temporal import flicker, warp_error
    from videdit.config import make_config
    from videdit.video.flow import FlowConfig, compute_flows

    cases = {Path(c["clip"]).stem: c for c in json.loads((SHARED / "cases.json").read_text())["cases"]}
    options = {"method": a.flow, **dict(a.flow_param)}
    flow = make_config(FlowConfig, options, "--flow-param")  # scoring and every mechanism's flow
    model = load_model(a.model)
    print(f"model={a.model} frames={a.frames} size={a.size} steps={a.steps} guidance={a.guidance} window={a.window} "
          f"flow={a.flow}")
    table = Table(("clip", "<6"), ("mechanism", "<30"), ("warp err", ">10.2f"), ("source", ">9.2f"),
                  ("ratio", ">8.2f"), ("vs indep.", ">11"), ("flicker", ">9.2f"), ("s", ">7.1f"))
    for clip in a.clips:
        case = cases[clip]
        path = SHARED / case["clip"]
        read = io.ReadOptions(max_frames=a.frames, size=a.size)
        source, _ = io.read_clip(path, read)
        flows = compute_flows(source, flow)            # the source's flow, once for every mechanism
        source_error = warp_error(source, flows)
        independent = None
        for name in a.mechanisms:
            t = time.perf_counter()
            res = edit_video(path, source_prompt=case["source"], target_prompt=case["target"][0], model=model,
                             steps=a.steps, guidance=a.guidance, read=read, window=a.window,
                             temporal=with_flow(MECHANISMS[name], options), use_cache=False)
            seconds = time.perf_counter() - t
            edited = np.stack([cv2.resize(f, source.shape[2:0:-1], interpolation=cv2.INTER_AREA) for f in res.frames])
            err = warp_error(edited, flows)
            if name == "independent":
                independent = err
            table.row(clip, name, err, source_error, err / source_error, versus(err, independent),
                      flicker(edited, source), seconds)


# -- command line ------------------------------------------------------------------------------

def main() -> None:
    p, command = subcommands(__doc__)

    c = command("inversions", inversions, "reconstruction error, UNet evaluations and seconds of every inversion",
                model="tiny-random", steps=50, dtype="fp32")
    c.add_argument("--frames", type=int, default=2, help="frames (tiny-random; toy: four scenes)")
    c.add_argument("--only", nargs="*", help="only these inversions")
    c = command("toy-edits", toy_edits, "inversion x editor on toy scenes: colour and shape edit success, IoU, PSNR",
                scenes=6, seed=7, steps=25, guidance=4.0)
    c.add_argument("--inversions", nargs="*", default=["ddim", "npi", "direct", "ddpm", "edict"])
    c.add_argument("--editors", nargs="*", default=["plain", "prompt_to_prompt", "plug_and_play", "masactrl",
                                                    "diffedit"])
    c = command("methods", methods, "every method at its reference's defaults and with each videdit improvement",
                scenes=4, seed=7, steps=25, guidance=4.0)
    c.add_argument("--only", nargs="*", help="only these inversions and editors")
    c = command("toy-video", toy_video, "warp error and edit success of temporal mechanisms on toy clips",
                model="toy", seed=0, frames=16, steps=25, guidance=4.0, inversion="direct",
                editor="prompt_to_prompt", window=8)
    c.add_argument("--clips", type=int, default=4, help="clips per run, cycling through the kinds")
    c.add_argument("--kinds", nargs="*", default=["translate", "scale", "rotate", "occlude"])
    c.add_argument("--inversion-param", "-I", type=parse_param, action="append", default=[], metavar="NAME=VALUE",
                   help="an option of the inversion, e.g. -I noise=frame (repeatable)")
    c.add_argument("--keep-background", type=float, metavar="THRESHOLD",
                   help="composite the source back where the latents did not change (the keep_background module)")
    c.add_argument("--mechanisms", nargs="*", default=list(MECHANISMS), choices=list(MECHANISMS))
    c.add_argument("--editor-param", "-E", type=parse_param, action="append", default=[], metavar="NAME=VALUE",
                   help="an option of the editor, e.g. -E self_replace_max_tokens=64 (repeatable)")
    c.add_argument("--tome", type=float, metavar="RATIO", help="token merging in the edits (videdit edit --tome)")
    c = command("temporal", temporal, "warp error and flicker of temporal mechanisms on real clips",
                model="tiny-random", frames=16, size=128, steps=10, guidance=7.5, window=8)
    c.add_argument("--clips", nargs="*", default=["wolf", "dog"])
    c.add_argument("--mechanisms", nargs="*", default=REAL_CLIP_MECHANISMS, choices=list(MECHANISMS))
    c.add_argument("--flow", default="dis", help="flow method of the scores and the mechanisms: dis, farneback, raft")
    c.add_argument("--flow-param", type=parse_param, action="append", default=[], metavar="NAME=VALUE",
                   help="a FlowConfig option, e.g. raft_weights=PATH (repeatable)")
    a = p.parse_args()
    a.run(a)


if __name__ == "__main__":
    main()
