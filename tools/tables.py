"""Quality tables, side by side in one run; one subcommand per table:

    python tools/tables.py inversions --model tiny-random --steps 50
    python tools/tables.py inversions --model toy --steps 50
    python tools/tables.py toy-edits --scenes 6 --steps 25 --guidance 4
    python tools/tables.py toy-video --clips 4 --frames 16 --steps 25 --guidance 4 [--keep-background 0.3] [--tome 0.5]
                                     [--deepcache 3]
    python tools/tables.py temporal --model tiny-random --frames 16 --size 128 --steps 10
    python tools/tables.py methods --scenes 4 --steps 25 --guidance 4
    python tools/tables.py presets [--clips 4 --frames 12] [--presets tokenflow fatezero ...] [--guidance 4]

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

presets: the video presets (configs/*.yaml) on the toy clips, each at its file's settings (the papers'
for tokenflow, fatezero, rerender and text2video-zero*; videdit's for tokenflow-plus, fatezero-replay,
rerender-pull, text2video-zero-ddim, recolour), beside independent per-frame editing with the same
inversion, editor, steps and guidance (no temporal module; FateZero's inversion without its anchor
frame): warp error along the ground-truth flow as a ratio to the source clip's and to that
independent editing's, frames whose colour edit succeeded (toy-video's test) for both and how many
of the preset's failed frames independent editing fails too, the mean change outside the objects
(0-255), UNet rows per output frame (inversion included; a guided step of one frame is two), and
the peak RSS of each run, measured by running it in a fresh process (``resource.getrusage``'s
ru_maxrss: Python, torch and the toy model included, about 0.5 GB). FateZero's layers, stated
for SD 1.5, are taken at the toy UNet's scale (``TOY_SCALE``); Text2Video-Zero's InstructPix2Pix
runs the toy model's (``toy-pix2pix``, ``tools/train_toy_pix2pix.py``) with the asked scene's
caption as its instruction; its ControlNet variants run the toy model's canny, pose and depth
ControlNets (``tools/train_toy_controlnet.py``), the pose and depth ones on each clip's true maps
given as folders (a preset whose ControlNet is not there prints why it cannot run). ``--guidance``/``--steps`` are toy
overrides for every preset, printed in the header.

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

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import SHARED, WOLF, Table, scratch_dir, subcommands   # tools/bench.py, beside this script
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
    table = Table(("inversion", "<22"), ("err g=1", ">10.2e"), ("err g=7.5", ">11.2e"), ("UNet evals", ">12d"),
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
    cache = scratch_dir("videdit-toy-table-")
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


def method_edit(model, steps: int, guidance: float, inversion: str, editor: str, inversion_params: dict,
                editor_params: dict, cache: str):
    """``edit(scene, obj, prompt, kind) -> image`` (for :func:`edit_scores`): the scene edited with the
    inversion and editor, the editor given what it needs from the scene (:func:`editor_inputs`)."""
    from videdit import edit_image

    def edit(scene, obj, prompt, kind):
        return edit_image(scene.image, source_prompt=scene.caption, target_prompt=prompt, model=model, steps=steps,
                          guidance=guidance, inversion=inversion, inversion_params=inversion_params, editor=editor,
                          editor_params={**editor_inputs(editor, scene, obj, prompt, kind), **editor_params},
                          cache_dir=cache)

    return edit


def methods(a) -> None:
    from videdit import load_model
    from videdit.errors import VideditError

    model = load_model("toy")
    scenes = one_object_scenes(a.seed, a.scenes)
    cache = scratch_dir("videdit-methods-table-")
    print(f"toy model, {a.scenes} one-object scenes of seed {a.seed}, {a.steps} steps, guidance {a.guidance}")
    table = Table(("method", "<40"), ("after", "<18"), *EDIT_COLUMNS)
    for label, inversion, editor, inv_params, ed_params in methods_rows(a.only):
        edit = method_edit(model, a.steps, a.guidance, inversion, editor, inv_params, ed_params, cache)
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
    tmp = Path(scratch_dir("videdit-toy-video-"))
    clips, kinds = [], [a.kinds[i % len(a.kinds)] for i in range(a.clips)]
    for i, kind in enumerate(kinds):
        clip = sample_clip(np.random.default_rng(a.seed + i), kind, a.frames)
        folder = tmp / f"clip{i}"
        folder.mkdir()
        for t, f in enumerate(clip.frames):
            cv2.imwrite(str(folder / f"{t:04d}.png"), f[..., ::-1])
        gt = clip_flows(clip)
        clips.append((clip, folder, gt, warp_error(clip.frames, gt)))   # the source's own error, once

    print(f"model={a.model} clips={a.clips} ({', '.join(kinds)}) frames={a.frames} steps={a.steps} "
          f"guidance={a.guidance} inversion={a.inversion} {inversion_params or ''} editor={a.editor} "
          f"{dict(a.editor_param) or ''} window={a.window} "
          f"keep_background={a.keep_background} tome={a.tome} deepcache={a.deepcache}")
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
                                        else {"threshold": a.keep_background}, token_merging=a.tome,
                                        feature_cache=a.deepcache).frames
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


# -- presets -----------------------------------------------------------------------------------

# The video presets side by side on the toy clips: (config file in configs/, toy-scale options). The
# papers' presets first, at their files' settings; then videdit's variants. FateZero's layer choice is
# stated for SD 1.5 (<= 32x32 query tokens of its 64x64 latents, >= 640 of its 320/640/1280 channels);
# on the toy UNet (16x16 latents, 64/128 channels) the same layers are <= 8x8 and >= 128 (toy scale).
PRESETS = {   # "model": the toy model in the place of the file's (Stable Diffusion 2.1-base, 1.4; InstructPix2Pix)
    "tokenflow": ("tokenflow", {"model": "toy"}),
    "fatezero": ("fatezero", {"model": "toy", "inversion_params": {"min_channels": 128, "max_tokens": 64}}),
    "rerender": ("rerender", {"controlnet": "toy-canny"}),   # its edge ControlNet: the toy model's canny one
    "text2video-zero": ("text2video-zero", {"model": "toy-pix2pix"}),   # the toy model's InstructPix2Pix UNet
    "text2video-zero-canny": ("text2video-zero-canny", {"controlnet": "toy-canny"}),
    # given maps: the toy clip's ground-truth pose or depth maps (videdit.toy.Clip.condition), the toy model's
    # pose or depth ControlNet in the place of the file's
    "text2video-zero-pose": ("text2video-zero-pose", {"controlnet": "toy-pose", "given": "pose"}),
    "text2video-zero-depth": ("text2video-zero-depth", {"controlnet": "toy-depth", "given": "depth"}),
    "tokenflow-plus": ("tokenflow-plus", {}),
    "fatezero-replay": ("fatezero-replay", {}),
    "rerender-pull": ("rerender-pull", {}),
    "text2video-zero-ddim": ("text2video-zero-ddim", {}),
    "recolour": ("recolour", {}),
}
PAPERS = ("tokenflow", "fatezero", "rerender", "text2video-zero", "text2video-zero-canny", "text2video-zero-pose",
          "text2video-zero-depth")
TOY_SCALE = {"fatezero": "-I min_channels=128 -I max_tokens=64",
             "rerender, text2video-zero-canny": "the toy model's canny ControlNet (toy-canny) at the file's scale",
             "text2video-zero-pose, -depth": "the toy model's pose and depth ControlNets (toy-pose, toy-depth) on "
                                             "the clip's true pose and depth maps",
             "text2video-zero": "the toy model's InstructPix2Pix UNet (toy-pix2pix), the asked scene's caption as "
                                "the instruction"}


def preset_settings(name: str, guidance: float | None = None, steps: int | None = None) -> dict:
    """``edit_video`` keywords of configs/NAME.yaml with its toy-scale options, and ``target_suffix``;
    ``guidance``/``steps``: the table's overrides (None: the preset's). A preset the toy model cannot
    run (another model, a ControlNet) raises VideditError saying what it needs."""
    import yaml

    from videdit.errors import VideditError

    file, toy = PRESETS[name]
    values = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / f"{file}.yaml").read_text())
    if "model" in values and toy.get("model") is None:
        raise VideditError(f"needs {values['model']}, for which the table names no toy model")
    kw = {k: values[k] for k in ("inversion", "editor", "steps", "guidance", "seed", "strength", "window")
          if k in values}
    if "controlnet" in values:   # the toy model's ControlNet in its place, at the file's scale
        from videdit.control.controlnet import TOY_CONTROLNETS, pair_controls, parse_controlnet

        net = toy.get("controlnet")
        if net is None:
            raise VideditError(f"needs a ControlNet ({', '.join(values['controlnet'])}); none is trained for the "
                               "toy model on its condition")
        if not (TOY_CONTROLNETS[net] / "config.json").exists():
            raise VideditError(f"needs the toy ControlNet {net} in {TOY_CONTROLNETS[net]} "
                               f"(tools/train_toy_controlnet.py --condition {net.removeprefix('toy-')} makes it)")
        nets = [f"{net}={parse_controlnet(n)[1]}" for n in values["controlnet"]]
        if "given" in toy:   # the maps are each clip's own: run_preset writes them and pairs them
            kw["given_control"] = (toy["given"], nets)
        else:
            kw["control"] = pair_controls(values["control"], nets)
    kw.update({"token_merging": values["tome"]} if "tome" in values else {})
    kw.update({"feature_cache": values["deepcache"]} if "deepcache" in values else {})
    kw["toy_model"] = toy.get("model", "toy")   # the toy model in the place of the file's model
    if kw["toy_model"] == "toy-pix2pix":
        from videdit.models.loading import TOY_PIX2PIX_DIR

        if not (TOY_PIX2PIX_DIR / "unet" / "config.json").exists():
            raise VideditError(f"needs the toy InstructPix2Pix UNet in {TOY_PIX2PIX_DIR} "
                               "(tools/train_toy_pix2pix.py makes it)")
    kw["negative_prompt"] = values.get("negative", "")
    kw["target_suffix"] = values.get("target_suffix", "")
    kw["temporal"] = values.get("temporal") or {}
    for k in ("inversion_params", "editor_params"):
        kw[k] = {**(values.get(k) or {}), **toy.get(k, {})}
    if guidance is not None:
        kw["guidance"] = guidance
    if steps is not None:
        kw["steps"] = steps
    return kw


def independent(settings: dict) -> dict:
    """``settings`` with every frame edited on its own: no temporal module, FateZero's inversion
    without its anchor frame (the same editor, inversion, steps and guidance)."""
    out = {**settings, "temporal": {}}
    if settings.get("inversion") == "fatezero":
        out["inversion_params"] = {**settings["inversion_params"], "anchor": "none"}
    return out


def toy_clips(seed: int, n: int, frames: int, kinds) -> list:
    """``n`` toy clips of ``frames`` frames, cycling through ``kinds``; clip i from seed + i."""
    from videdit.toy import sample_clip

    return [sample_clip(np.random.default_rng(seed + i), kinds[i % len(kinds)], frames) for i in range(n)]


def background_change(frames: np.ndarray, clip) -> float:
    """Mean |edit - source| (0-255) outside every object's visible mask grown by 2 px, over the frames."""
    return float(np.mean([np.abs(f.astype(np.float32) - s.astype(np.float32))[~_grown(m.any(0), 2)].mean()
                          for f, s, m in zip(frames, clip.frames, clip.masks)]))


def what_is_found(frame: np.ndarray, clip, t: int) -> str:
    """What the success test reads in ``frame``: the colour on the front object's true pixels; in a
    one-object clip also the largest detected object's shape (read in place) and its IoU with the true
    mask; in a two-object clip the colour on the back object's visible pixels (where the test scores them)."""
    from videdit.toy.scores import MIN_AREA, classify_colour, classify_shape_in_place, detect_objects, mask_iou

    colour = classify_colour(frame, clip.masks[t, -1])
    if len(clip.objects) > 1:
        back = clip.masks[t, 0]
        return f"{colour}, back {classify_colour(frame, back) if back.sum() >= MIN_AREA else 'hidden'}"
    found = detect_objects(frame)
    if not found:
        return f"{colour}, no object"
    shape = classify_shape_in_place(found[0].mask, clip.objects_at(t)[0])
    return f"{colour} {shape} IoU {mask_iou(found[0].mask, clip.masks[t, 0]):.2f}"


def write_frames(folder: Path, frames: np.ndarray) -> None:
    """``frames`` (T, H, W, 3) RGB as ``folder``/0000.png ..."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for t, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{t:04d}.png"), f[..., ::-1])


def run_preset(settings: dict, clips, model, folder: Path, save: Path | None = None) -> list[dict]:
    """Edit every clip with ``settings``: per clip, its warp error along the ground-truth flow,
    the frames whose colour edit succeeded, the background change and the UNet evaluations
    (rows through the UNet: a guided step of one frame is two) per output frame; with ``save``,
    the edited frames as ``save``/clip<i>/0000.png ..."""
    from bench import rows_through
    from videdit import edit_video
    from videdit.io import ReadOptions
    from videdit.metrics.temporal import warp_error
    from videdit.toy.scores import classify_colour, clip_flows, clip_frame_success, recoloured

    settings = dict(settings)
    settings.pop("toy_model", None)   # the caller loaded it
    suffix = settings.pop("target_suffix", "")
    given, nets = settings.pop("given_control", (None, []))
    out = []
    for i, clip in enumerate(clips):
        frames_dir = folder / f"clip{i}"
        write_frames(frames_dir, clip.frames)
        if given:   # the clip's true maps, as a user gives them: --control KIND=FOLDER
            from videdit.control.controlnet import pair_controls

            write_frames(folder / f"clip{i}-{given}", clip.condition(given))
            settings["control"] = pair_controls([f"{given}={folder / f'clip{i}-{given}'}"], nets)
        prompt, colour = recoloured(clip)
        t0 = time.perf_counter()
        with rows_through(model.unet) as rows:
            frames = edit_video(frames_dir, source_prompt=clip.caption,
                                target_prompt=f"{prompt}, {suffix}" if suffix else prompt, model=model,
                                use_cache=False, read=ReadOptions(size="source"), **settings).frames
        if save is not None:
            write_frames(save / f"clip{i}", frames)
        out.append({"warp": warp_error(frames, clip_flows(clip)),
                    "ok": [bool(clip_frame_success(f, clip, t, colour)) for t, f in enumerate(frames)],
                    "colour_ok": [classify_colour(f, clip.masks[t, -1]) == colour for t, f in enumerate(frames)],
                    "found": [what_is_found(f, clip, t) for t, f in enumerate(frames)],
                    "background": background_change(frames, clip), "evals": sum(rows) / len(frames),
                    "seconds": time.perf_counter() - t0})
    return out


def row_model(name: str, toy_model: str | None) -> str:
    """The model a row loads: ``toy_model`` (a train_toy.py export) in the shipped toy model's place;
    toy-pix2pix keeps the shipped one (its UNet reads the shipped text encoder)."""
    return toy_model if toy_model and name == "toy" else name


def presets_child(a) -> None:
    """One row in this (fresh) process: its per-clip scores and this process's peak RSS, as JSON."""
    from bench import peak_rss_mib
    from videdit import load_model

    name, _, which = a.child.partition(":")
    settings = preset_settings(name, a.guidance, a.steps)
    if which == "independent":
        settings = independent(settings)
    model = load_model(row_model(settings.pop("toy_model"), a.toy_model))
    with tempfile.TemporaryDirectory() as tmp:
        save = Path(a.save) / a.child.replace(":", "-") if a.save else None
        clips = run_preset(settings, toy_clips(a.seed, a.clips, a.frames, a.kinds), model, Path(tmp), save)
    print(json.dumps({"clips": clips, "peak_mb": peak_rss_mib()}))


def _in_child(a, spec: str) -> dict:
    import subprocess
    import sys

    cmd = [sys.executable, __file__, "presets", "--child", spec, "--clips", str(a.clips), "--frames", str(a.frames),
           "--seed", str(a.seed), "--kinds", *a.kinds]
    for option in ("guidance", "steps", "save", "toy_model"):
        if getattr(a, option) is not None:
            cmd += [f"--{option.replace('_', '-')}", str(getattr(a, option))]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{spec} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def presets(a) -> None:
    from videdit.errors import VideditError
    from videdit.metrics.temporal import warp_error
    from videdit.toy.scores import clip_flows, recoloured

    if a.child:
        return presets_child(a)
    clips = toy_clips(a.seed, a.clips, a.frames, a.kinds)
    sources = [warp_error(c.frames, clip_flows(c)) for c in clips]
    overrides = " ".join(f"--{k} {getattr(a, k)}" for k in ("guidance", "steps") if getattr(a, k) is not None)
    model = "toy model" if a.toy_model is None else f"{a.toy_model} in the toy model's place"
    print(f"{model}, {a.clips} clips ({', '.join(c.kind for c in clips)}) of {a.frames} frames, seeds "
          f"{a.seed}-{a.seed + a.clips - 1}; each preset at its file's settings"
          f"{'; toy overrides: ' + overrides if overrides else ''}; toy scale: "
          + "; ".join(f"{k} {v}" for k, v in TOY_SCALE.items()))
    print("warp x src: warp error along the ground-truth flow / the source clip's; vs indep.: / the same settings' "
          "independent per-frame editing's; ok: frames whose colour edit succeeded (colour and layout: toy-video's "
          "test); colour ok: frames whose front object has the asked colour (layout not checked); both fail: share "
          "of the preset's failed frames that independent editing fails too; bg: mean |edit - source| outside the "
          "objects (0-255); evals: UNet rows per output frame (a guided step is 2), inversion included; MiB: peak RSS "
          "of the run's own process (Python, torch and the toy model included)", flush=True)
    table = Table(("preset", "<30"), ("warp x src", ">11.2f"), ("vs indep.", ">10.2f"), ("ok", ">6.0%"),
                  ("colour ok", ">10.0%"), ("indep. ok", ">10.0%"), ("both fail", ">10"), ("bg", ">6.1f"),
                  ("evals", ">7.1f"), ("MiB", ">7.0f"), ("s/clip", ">8.1f"))
    floor = [truth(c, recoloured(c)[1]) for c in clips]
    table.row("ground-truth recolouring", float(np.mean([warp_error(f, clip_flows(c)) / s
                                                         for f, c, s in zip(floor, clips, sources)])),
              "-", 1.0, 1.0, "-", "-", float(np.mean([background_change(f, c) for f, c in zip(floor, clips)])),
              "-", "-", "-")
    done: dict[str, dict] = {}
    for name in a.presets:
        try:
            settings = preset_settings(name, a.guidance, a.steps)
        except VideditError as e:
            print(f"{name + (' [paper]' if name in PAPERS else ''):<30}cannot run on the toy model: {e}", flush=True)
            continue
        row = _in_child(a, name)
        key = json.dumps(independent(settings), sort_keys=True, default=repr)   # presets sharing an independent run
        if key not in done and not a.no_independent:
            done[key] = _in_child(a, f"{name}:independent")
        ind = done.get(key)
        ok = [h for c in row["clips"] for h in c["ok"]]
        warp = [c["warp"] / s for c, s in zip(row["clips"], sources)]
        if ind:
            ind_ok = [h for c in ind["clips"] for h in c["ok"]]
            failed = [i for i, h in enumerate(ok) if not h]
            both = f"{sum(not ind_ok[i] for i in failed)}/{len(failed)}"
            vs = float(np.mean([c["warp"] for c in row["clips"]]) / np.mean([c["warp"] for c in ind["clips"]]))
        else:
            ind_ok, both, vs = [], "-", "-"
        table.row(name + (" [paper]" if name in PAPERS else ""), float(np.mean(warp)), vs, float(np.mean(ok)),
                  float(np.mean([h for c in row["clips"] for h in c["colour_ok"]])),
                  float(np.mean(ind_ok)) if ind_ok else "-", both,
                  float(np.mean([c["background"] for c in row["clips"]])),
                  float(np.mean([c["evals"] for c in row["clips"]])), row["peak_mb"],
                  float(np.mean([c["seconds"] for c in row["clips"]])))
        if a.per_clip:   # and the colour found on the front object's true pixels where the edit failed
            print("    per clip, warp x src / ok: " + "  ".join(
                f"{c.kind} {r['warp'] / s:.1f} / {np.mean(r['ok']):.0%}" for c, r, s in zip(clips, row["clips"],
                                                                                         sources)), flush=True)
            for c, r, ir in zip(clips, row["clips"], ind["clips"] if ind else [None] * len(clips)):
                front, asked = c.objects[-1], recoloured(c)[1]
                print(f"    {c.kind}: {front.colour} {front.shape} -> {asked}; failed frames (found): " + ", ".join(
                    f"{t} ({r['found'][t]}{'' if ir is None else ', indep. ' + ir['found'][t]})"
                    for t, h in enumerate(r["ok"]) if not h), flush=True)


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
    c.add_argument("--deepcache", type=int, metavar="INTERVAL",
                   help="feature caching in the edits (videdit edit --deepcache)")
    c = command("temporal", temporal, "warp error and flicker of temporal mechanisms on real clips",
                model="tiny-random", frames=16, size=128, steps=10, guidance=7.5, window=8)
    c.add_argument("--clips", nargs="*", default=["wolf", "dog"])
    c.add_argument("--mechanisms", nargs="*", default=REAL_CLIP_MECHANISMS, choices=list(MECHANISMS))
    c.add_argument("--flow", default="dis", help="flow method of the scores and the mechanisms: dis, farneback, raft")
    c.add_argument("--flow-param", type=parse_param, action="append", default=[], metavar="NAME=VALUE",
                   help="a FlowConfig option, e.g. raft_weights=PATH (repeatable)")
    c = command("presets", presets, "the video presets at their papers' settings and videdit's variants on toy clips",
                seed=0, clips=4, frames=12)
    c.add_argument("--kinds", nargs="*", default=["translate", "scale", "rotate", "occlude"])
    c.add_argument("--presets", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    c.add_argument("--guidance", type=float, help="toy override: this guidance for every preset (default: each's own)")
    c.add_argument("--steps", type=int, help="toy override: this many steps for every preset (default: each's own)")
    c.add_argument("--no-independent", action="store_true", help="skip the independent per-frame runs")
    c.add_argument("--per-clip", action="store_true", help="also each clip's warp error and frames edited")
    c.add_argument("--save", metavar="DIR", help="keep the edited frames: DIR/PRESET[-independent]/clip<i>/*.png")
    c.add_argument("--toy-model", metavar="DIR", help="a tools/train_toy.py export in the toy model's place (the "
                   "presets on toy-pix2pix keep the shipped one: its UNet reads the shipped text encoder)")
    c.add_argument("--child", help=argparse.SUPPRESS)   # one row, in a fresh process
    a = p.parse_args()
    a.run(a)


if __name__ == "__main__":
    main()
