"""Command line: argument parsing only; the work is in videdit.pipeline."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from videdit.errors import VideditError
from videdit.registry import DEFAULT_MODEL


def _size(text: str) -> int | tuple[int, int] | str:
    """"512" (short side), "640x360" (width x height) or "source" (the source's own size)."""
    from videdit.io.options import parse_size

    try:
        return parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N (short side), WxH or source, got {text!r}") from None


def _yaml_problem(e: Exception, where: bool = True) -> str:
    """PyYAML's several-line message in one line: what is wrong and, with ``where``, at which line and
    column (1-based) in what; a one-line flag value needs only the what."""
    problem, mark = getattr(e, "problem", None), getattr(e, "problem_mark", None)
    if problem is None:
        return " ".join(str(e).split())
    if not where:
        return problem
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context:
        text += f" ({context}" + (f" started at line {start.line + 1}, column {start.column + 1})" if start else ")")
    return text


def parse_param(text: str) -> tuple[str, object]:
    """"name=value" -> (name, value), the value read as YAML (numbers, booleans, lists), as ``-I``/``-E`` read it;
    an argparse ``type=`` for tools that take the same options."""
    import yaml

    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name.strip().replace("-", "_"), yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"{text}: the value is not valid YAML ({_yaml_problem(e, where=False)}); "
                                         "quote strings, close brackets") from None


def _concept(remove: bool):
    """"TEXT" or "TEXT=SCALE" -> a concept mapping for the editor's ``concepts`` option."""

    def parse(text: str) -> dict:
        name, sep, scale = text.rpartition("=")
        if not sep:
            name, scale = text, None
        if not name.strip():
            raise argparse.ArgumentTypeError(f"expected TEXT or TEXT=SCALE, got {text!r}")
        concept = {"text": name.strip(), "remove": remove}
        if scale is not None:
            try:
                concept["scale"] = float(scale)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected TEXT=SCALE with a number, got {text!r}") from None
        return concept

    return parse


def _reweight(text: str) -> tuple[str, float]:
    """"WORD=SCALE" -> (word, scale) for prompt_to_prompt's ``reweight``."""
    word, sep, scale = text.rpartition("=")
    try:
        if not sep or not word.strip():
            raise ValueError
        return word.strip(), float(scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WORD=SCALE, e.g. watercolor=10, got {text!r}") from None


def _top_level_split(text: str, sep: str = ",") -> list[str]:
    """Split at the ``sep`` outside brackets, braces and quotes: "a=[1, 2],b=c" -> ["a=[1, 2]", "b=c"]."""
    parts, start, depth, quote = [], 0, 0, ""
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(depth - 1, 0)
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def _temporal(text: str) -> tuple[str, dict]:
    """"NAME" or "NAME:k=v,k=v" -> (name, options), values read as YAML; a comma inside a value's
    brackets, braces or quotes (flow={colour: gray, method: dis}) stays in the value."""
    name, _, rest = text.partition(":")
    if not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME or NAME:KEY=VALUE,..., got {text!r}")
    return name.strip(), dict(parse_param(item) for item in _top_level_split(rest) if item.strip())


def temporal_modules(a) -> dict:
    """--temporal entries (a config file's first) -> {name: options}; a later entry for the
    same module adds to, and overrides, the options of an earlier one."""
    out: dict[str, dict] = {}
    for name, params in a.temporal:
        out.setdefault(name, {}).update(params)
    return out


def editor_params(a) -> dict:
    """-E options, then the shortcut flags --mask, --concept/--remove-concept, --replace, --reweight
    and --blend-words (which replace a config file's value of their option).
    A flag the chosen editor does not take is an error naming the editors that do."""
    from dataclasses import fields

    from videdit.editing import EDITORS, get_editor

    params = dict(a.editor_param)
    flags = {"mask": ("--mask", str(a.mask) if a.mask is not None else None),
             "concepts": ("--concept/--remove-concept", a.concept or None),
             "cross_replace": ("--replace", a.replace),
             "reweight": ("--reweight", dict(a.reweight) or None),
             "blend_words": ("--blend-words", a.blend_words)}
    taken = {f.name for f in fields(get_editor(a.editor).config)}
    for key, (flag, value) in flags.items():
        if value is None:
            continue
        if key not in taken:
            takers = sorted(n for n, spec in EDITORS.items() if key in {f.name for f in fields(spec.config)})
            raise VideditError(f"{flag}: editor {a.editor!r} does not take {key}; use --editor with one of {takers}")
        params[key] = value
    return params


def _add_read_args(p: argparse.ArgumentParser, working: bool = True) -> None:
    """The frame selection flags; ``working``: --size is the edit's working size (else the size the
    clips are compared at)."""
    g = p.add_argument_group("frames to read")
    g.add_argument("--start", type=float, help="start time in seconds")
    g.add_argument("--end", type=float, help="end time in seconds")
    g.add_argument("--start-frame", type=int, default=0, help="first frame index")
    g.add_argument("--end-frame", type=int, help="frame index to stop before")
    g.add_argument("--stride", type=int, default=1, help="take every N-th frame")
    g.add_argument("--fps", type=float, help="resample to this frame rate (instead of --stride)")
    g.add_argument("--max-frames", type=int, help="at most this many frames")
    if working:
        g.add_argument("--size", type=_size, help="working size: N (short side), WxH, or 'source' (the source's "
                       "own); default: the model's native short side (512 for SD 1.x and tiny-random, 768 for "
                       "SD 2.x, 1024 for SDXL, 64 for toy); the output keeps the source's size")
    else:
        g.add_argument("--size", type=_size, help="the size both clips are compared at: N (short side), WxH, or "
                       "'source' (default: the original's own)")


class _Refused(argparse.Action):
    """A flag a command refuses, saying why in one line (argparse alone would call it unrecognized);
    left out of the command's --help."""

    def __init__(self, option_strings, dest, reason: str, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help=argparse.SUPPRESS, **kwargs)
        self.reason = reason

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(self.reason)


def _add_model_args(p: argparse.ArgumentParser, fills_cache: bool = False) -> None:
    """The model, sampler and inversion flags; ``fills_cache``: the command exists to fill the
    inversion cache, so it refuses --no-cache."""
    g = p.add_argument_group("model and sampler")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id (default {DEFAULT_MODEL}: Stable Diffusion 1.5, downloaded into the Hugging Face "
                   "cache on first use), local diffusers directory, single .safetensors/.ckpt checkpoint, 'toy' "
                   "(shipped, offline), or 'tiny-random' / 'tiny-sdxl' (SD / SDXL layout, random weights, for tests "
                   "and benchmarks)")
    g.add_argument("--model-config", metavar="DIR|YAML", help="a single-file checkpoint's architecture: a diffusers "
                   "directory or hub id of the same model family, or the original .yaml (SD 1.x/2.x; default: "
                   "inferred)")
    g.add_argument("--lora", action="append", default=[], metavar="FILE[=SCALE]",
                   help="a LoRA fused into the weights at SCALE (default 1; repeatable, applied in order)")
    g.add_argument("--embedding", action="append", default=[], metavar="FILE",
                   help="a textual-inversion embedding; its token (the file's, else its name) works in prompts "
                   "(SDXL: a file of clip_l and clip_g vectors, its name the token; repeatable)")
    g.add_argument("--vae", metavar="DIR|FILE", help="a replacement VAE: a diffusers directory or a single file")
    g.add_argument("--control", action="append", default=[], metavar="canny|softedge|KIND=PATH",
                   help="a ControlNet condition per frame: canny or softedge (computed from the frames), or "
                   "depth=PATH, pose=PATH, image=PATH (a video, a frame folder or one image, resized to the working "
                   "size); the k-th pairs with the k-th --controlnet (repeatable)")
    g.add_argument("--controlnet", action="append", default=[], metavar="MODEL[=SCALE]",
                   help="a ControlNet (hub id, e.g. lllyasviel/sd-controlnet-canny, a local diffusers directory, or "
                   "tiny-random) at conditioning SCALE (default 1); several add up (repeatable)")
    g.add_argument("--steps", type=int, help="DDIM steps (default: the method's reference value, else 50)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale of the edit (default: the "
                   "method's reference value, else 7.5); exact inversions invert at it")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=8, help="frames per UNet call (default 8)")
    g.add_argument("--window", type=int, default=16, help="frames edited together; memory grows with it (default 16)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    g.add_argument("--vae-dtype", choices=["fp32", "fp16", "bf16"], help="the VAE's dtype (default: --dtype's)")
    g.add_argument("--vae-tiling", action="store_true", help="encode and decode frames larger than the VAE's "
                   "sample size in overlapping tiles: far less memory, slightly other pixels")
    g.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the UNet's convolutional blocks and the VAE, once per shape (for GPUs; the "
                   "compile time is reported apart); MODE: inductor's (default, reduce-overhead: CUDA graphs, "
                   "max-autotune)")
    g.add_argument("--channels-last", action="store_true", help="channels-last memory for the UNet and VAE "
                   "(for GPUs' convolutions)")
    g.add_argument("--inversion", help="inversion method (default: the editor's, else ddim; see `videdit methods`)")
    g.add_argument("--inversion-param", "-I", type=parse_param, action="append", default=[], metavar="NAME=VALUE",
                   help="an option of the inversion, e.g. -I inner_steps=10 (repeatable)")
    g.add_argument("--config", type=Path, help="YAML file of option defaults, or a preset's name (configs/NAME.yaml, "
                   "e.g. tokenflow); flags given here win")
    g.add_argument("--inversion-dtype", default="model", choices=["model", "fp32"],
                   help="fp32: invert with the UNet in fp32 while the edit runs in --dtype (helps an exact "
                   "inversion only when the edit runs in fp32 too)")
    g.add_argument("--negative", default="", help="negative prompt (the unconditional branch)")
    g.add_argument("--strength", type=float, help="invert and edit only the last int(steps * STRENGTH) steps "
                   "(default: the method's reference value, 1 for most; see `videdit methods`)")
    g.add_argument("--steps-offset", type=int, metavar="N", help="shift every timestep by N (diffusers' "
                   "steps_offset; default: the method's reference value, else the model config's, 1 for SD 1.x)")
    g.add_argument("--max-tokens", type=int, metavar="N", help="refuse working sizes over N latent tokens "
                   "(h x w) per frame, before any work (default $VIDEDIT_MAX_TOKENS, else 4x the model's native "
                   "square, at least 16384: SD 1.x at 1024x1024 pixels; SDXL 65536)")
    g.add_argument("--cache-dir", help="inversion cache (default $VIDEDIT_CACHE_DIR or ~/.cache/videdit/inversions)")
    if fills_cache:
        g.add_argument("--no-cache", action=_Refused,
                       reason="invert fills the inversion cache; --no-cache would throw its work away")
    else:
        g.add_argument("--no-cache", action="store_true", help="do not read or write the inversion cache")


def _model(a):
    """--model as given, or loaded here when --model-config, --lora, --embedding, --vae or a speed option
    (--vae-dtype, --vae-tiling, --compile, --channels-last) add to it."""
    extras = dict(config=a.model_config, lora=a.lora, embeddings=a.embedding, vae=a.vae, vae_dtype=a.vae_dtype,
                  vae_tiling=a.vae_tiling, compile=a.compile, channels_last=a.channels_last)
    if not any(extras.values()):
        return a.model
    from videdit.models import load_model

    return load_model(a.model, device=a.device, dtype=a.dtype, **extras)


def _control(a) -> list:
    """--control and --controlnet, paired in order (one line where their counts differ)."""
    from videdit.control import pair_controls

    return pair_controls(a.control, a.controlnet)


def _read_options(a):
    from videdit.io import ReadOptions

    return ReadOptions(start_frame=a.start_frame, end_frame=a.end_frame, start_s=a.start, end_s=a.end,
                       stride=a.stride, fps=a.fps, max_frames=a.max_frames, size=a.size)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors (a malformed or unknown flag, a missing argument) in one line, as
    main prints every videdit error, instead of the usage block first; --help still shows it."""

    def error(self, message: str):
        self.exit(2, f"videdit: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="videdit", description="Text-guided image and video editing with diffusion models.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines")
    sub = parser.add_subparsers(dest="command", required=True)
    add = lambda name, **kw: sub.add_parser(name, parents=[common], **kw)  # noqa: E731

    p = add("edit", help="edit an image or a clip", description="Invert INPUT under the source prompt and "
                       "regenerate it under the target prompt. Images and clips alike.")
    p.add_argument("input", type=Path, help="video file, folder of frames, or image")
    p.add_argument("-s", "--source", default="", help="prompt describing the input")
    p.add_argument("-t", "--target", help="prompt describing the wanted output (required; a --config file's "
                   "`target:` gives it too)")
    p.add_argument("--target-suffix", default="", metavar="TEXT", help="appended to the target prompt after a "
                   "comma (the Text2Video-Zero ControlNet presets add their reference's 'best quality, extremely "
                   "detailed')")
    p.add_argument("-o", "--output", type=Path, required=True, help=".mp4, .gif, .png/.jpg (images), or a folder")
    p.add_argument("--preview", type=Path, help="also write a source|edit preview GIF here")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the frames in a non-empty output folder (one that holds other files is refused; "
                   "an output file is replaced either way, atomically)")
    p.add_argument("--editor", default="plain", help="editor (see `videdit methods`)")
    p.add_argument("--source-branch", choices=["replay", "pinned"],
                   help="editors with a source branch: replay it from the inverted noise, or pin it to the "
                   "inversion's latents at every step (default: the editor's reference; see `videdit methods`)")
    p.add_argument("--editor-param", "-E", type=parse_param, action="append", default=[], metavar="NAME=VALUE",
                   help="an option of the editor (repeatable)")
    p.add_argument("--mask", type=Path, help="mask image (white = edit, black = keep; grey = partial) or .npy "
                   "map, any size with the frames' aspect ratio: the editor's `mask` option")
    p.add_argument("--concept", type=_concept(remove=False), action="append", default=[], metavar="TEXT[=SCALE]",
                   help="a concept to add (sega, ledits), with an optional guidance scale (repeatable)")
    p.add_argument("--remove-concept", dest="concept", type=_concept(remove=True), action="append",
                   metavar="TEXT[=SCALE]", help="a concept to remove (sega, ledits) (repeatable)")
    p.add_argument("--replace", type=float, metavar="FRACTION",
                   help="prompt_to_prompt: edit cross-attention for this fraction of the steps (cross_replace)")
    p.add_argument("--reweight", type=_reweight, action="append", default=[], metavar="WORD=SCALE",
                   help="prompt_to_prompt: scale the attention to a word of the target prompt (repeatable)")
    p.add_argument("--blend-words", nargs="+", metavar="WORD",
                   help="prompt_to_prompt: local blend, keeping the frames outside these words' attention")
    p.add_argument("--keep-background", type=float, nargs="?", const=True, metavar="THRESHOLD",
                   help="after decoding, keep the input's own pixels wherever the edit changed the latents by less "
                   "than THRESHOLD (default 0.3) of the largest change: no VAE loss or flicker "
                   "outside the edit")
    p.add_argument("--tome", type=float, metavar="RATIO",
                   help="token merging (tomesd): merge this fraction of the tokens of the full-resolution "
                   "self-attention layers in the edit's UNet calls, e.g. 0.5 (faster, less exact; default off; a "
                   "config's tome: may map TokenMerging options, see README)")
    p.add_argument("--deepcache", type=int, metavar="INTERVAL",
                   help="feature caching (DeepCache): the whole UNet every INTERVAL steps of the edit, only its "
                   "shallowest layers between, e.g. 3 (faster, less exact; default off; a config's deepcache: may "
                   "map its options interval and branch)")
    p.add_argument("--temporal", type=_temporal, action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                   help="a temporal module with its options, e.g. flow_propagation:strength=0.6 (repeatable; "
                   "see `videdit methods`)")
    p.add_argument("--report", type=Path, metavar="FILE.json",
                   help="also write temporal scores of the result (flow warp error, flicker) as JSON")
    _add_model_args(p)
    _add_read_args(p)

    p = add("invert", help="invert a clip and fill the cache",
                       description="Run the inversion stage only, so later edits of INPUT start at once. "
                       "--config takes an edit's preset: its inversion options count, the rest is the edit's.")
    p.add_argument("input", type=Path, help="video file, folder of frames, or image")
    p.add_argument("-s", "--source", default="", help="prompt describing the input")
    p.add_argument("--editor", default="plain", help="the edit's editor, where its reference sets the strength")
    _add_model_args(p, fills_cache=True)
    _add_read_args(p)

    p = add("preview", help="write a GIF preview of any clip",
            description="Write INPUT as a small looping GIF (each side at most --max-side pixels, at most "
            "--max-fps and --gif-frames frames), with --compare beside it on the left.")
    p.add_argument("input", type=Path, help="video file, folder of frames, or image")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .gif to write")
    p.add_argument("--compare", type=Path, help="a second clip shown on the left, side by side")
    p.add_argument("--max-side", type=int, default=256, help="longer side of each panel in pixels (default 256)")
    p.add_argument("--max-fps", type=float, default=12,
                   help="above this frame rate every k-th frame is kept (default 12)")
    p.add_argument("--gif-frames", type=int, default=48,
                   help="at most this many frames in the GIF, picked evenly so it lasts as long as the clip "
                   "(default 48)")
    p.add_argument("--max-frames", type=int, help="at most this many frames read from INPUT and --compare")
    p.add_argument("--start-frame", type=int, default=0,
                   help="--compare's first frame: the edit's own --start-frame, so that a part edited lines up")
    p.add_argument("--end-frame", type=int, help="--compare's end frame (exclusive): the edit's own --end-frame")
    p.add_argument("--stride", type=int, default=1, help="every n-th frame of --compare: the edit's own --stride")
    p.add_argument("--start", type=float, help="--compare's start in seconds: the edit's own --start")
    p.add_argument("--end", type=float, help="--compare's end in seconds: the edit's own --end")
    p.add_argument("--fps", type=float, help="--compare resampled to this rate: the edit's own --fps")

    p = add("eval", help="score the temporal consistency of an edited clip",
            description="Flow warp error of EDITED along ORIGINAL's optical flow (and of ORIGINAL itself), "
                        "their ratio, and flicker. The read options select ORIGINAL's frames as the edit did.")
    p.add_argument("original", type=Path, help="the source clip")
    p.add_argument("edited", type=Path, help="the edited clip (resized to the original's frames)")
    p.add_argument("--report", type=Path, metavar="FILE.json", help="also write the scores as JSON")
    p.add_argument("--flow", default="dis", help="flow method: dis (default), farneback, raft")
    p.add_argument("--flow-param", type=parse_param, action="append", default=[], metavar="NAME=VALUE",
                   help="a FlowConfig option, e.g. preset=fast, colour=gray or raft_weights=PATH (repeatable)")
    _add_read_args(p, working=False)

    p = add("methods", help="list the inversions, editors and temporal modules with their options",
            description="Each method's summary, reference, reference settings, models, options and where videdit's "
            "defaults depart from the reference; lines wrap at the terminal's width.")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these methods (default: all)")
    p = add("serve", help="a web page for editing (pip install \"videdit[ui]\")",
            description="Serve a Gradio page over the Python API: upload a clip, pick a preset, edit, compare, "
            "download the result and its settings as a YAML preset for `videdit edit --config`. One model load, "
            "runs one at a time; uploads and outputs live in a temporary folder removed on exit.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="the model every run uses, loaded once (as edit's --model)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--cache-dir", help="keep the inversions in this cache (default: in the server's temporary "
                   "folder, removed with the uploads when it stops)")
    p.add_argument("--max-upload-mb", type=float, default=200, help="largest upload in MB (default 200)")
    p.add_argument("--max-seconds", type=float, default=60, help="longest clip in seconds (default 60)")
    p.add_argument("--max-frames", type=int, default=600, help="most frames in a clip or zip (default 600)")
    _add_batch_parser(add)
    return parser


def _add_batch_parser(add) -> None:
    p = add("batch", help="run a job file of edits (clips x prompts), here or on a Ray cluster",
            description="Run the jobs of JOBS (YAML, JSON Lines or CSV; see README, Batches and clusters) with "
            "each worker's model loaded once and each clip inverted once. Finished jobs (output and matching "
            "record beside it) are skipped, so rerunning finishes an interrupted batch. Exit code 1 when a job "
            "failed.")
    p.add_argument("jobs", type=Path, help="the job file: .yaml/.yml, .jsonl or .csv")
    p.add_argument("--set", dest="overrides", type=parse_param, action="append", default=[], metavar="NAME=VALUE",
                   help="an option of every job, over the file's, e.g. --set steps=2 --set max_frames=8 (repeatable)")
    p.add_argument("--model", help="the model where the job file names none (default "
                   f"{DEFAULT_MODEL})")
    p.add_argument("--cache-dir", help="inversion cache (default $VIDEDIT_CACHE_DIR or ~/.cache/videdit/inversions); "
                   "on a cluster, a folder every worker reaches or one per node")
    p.add_argument("--report", type=Path, metavar="FILE.json",
                   help="the batch report (default: JOBS' name with .report.json, beside it)")
    p.add_argument("--no-scores", action="store_true", help="skip each output's warp error")
    g = p.add_argument_group("Ray (pip install 'videdit[ray]')")
    g.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray: alone, a local cluster started for the run; 'auto' or an address (ray://host:"
                   "10001, host:6379) joins one")
    g.add_argument("--workers", type=int, help="workers (actors), each keeping its model loaded (default: the "
                   "cluster's GPUs / --gpus-per-worker, or its CPUs / --cpus-per-worker; at most one per job)")
    g.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (default: 1 where the cluster has GPUs, "
                   "else 0: CPU workers)")
    g.add_argument("--cpus-per-worker", type=float, default=1, help="CPUs per worker (default 1)")
    g.add_argument("--retries", type=int, default=2, help="times a job whose worker died is retried (default 2)")


def edit_kwargs(a) -> dict:
    """The keyword arguments of ``edit_video`` an ``edit`` command line means (less input and output);
    ``videdit serve`` runs its page's settings through it, so its YAML preset reproduces the page's run."""
    from videdit.video.keep_background import keep_background_options

    return dict(source_prompt=a.source, target_prompt=_target(a), model=_model(a),
                steps=a.steps, guidance=a.guidance, seed=a.seed, negative_prompt=a.negative,
                inversion=a.inversion, inversion_params=dict(a.inversion_param), editor=a.editor,
                editor_params=editor_params(a), read=_read_options(a), window=a.window,
                batch_size=a.batch_size, device=a.device, dtype=a.dtype, cache_dir=a.cache_dir,
                use_cache=not a.no_cache, preview=a.preview, overwrite=a.overwrite,
                progress=not a.quiet, temporal=temporal_modules(a), inversion_dtype=a.inversion_dtype,
                keep_background=keep_background_options(a.keep_background), strength=a.strength,
                steps_offset=a.steps_offset, source_branch=a.source_branch, max_tokens=a.max_tokens,
                control=_control(a), token_merging=a.tome, feature_cache=a.deepcache)


def _edit(a) -> None:
    from videdit.io import is_image
    from videdit.io.write import VIDEO_FORMATS
    from videdit.pipeline import edit_video

    if a.report and is_image(a.output):
        raise VideditError(f"--report scores a clip; {a.output} is a single image (write a video or a folder)")
    _check_report(a.report, a.input, a.output)
    result = edit_video(a.input, a.output, **edit_kwargs(a))
    s = result.stats
    w, h = result.info.source_size
    if a.output.suffix.lower() in VIDEO_FORMATS:   # H.264 and VP9 take even sizes: the edge repeated once
        w, h = w + w % 2, h + h % 2
    msg = (f"wrote {result.output} ({_count(s.frames, 'frame')}, worked at {s.size[0]}x{s.size[1]}, written at "
           f"{w}x{h}; inversion {s.seconds['invert']:.1f}s, "
           f"{s.cache_hits}/{s.windows} windows from cache; edit {s.seconds['edit']:.1f}s"
           + (f"; compiling {s.seconds['compile']:.1f}s" if s.seconds["compile"] else "") + ")")
    if a.preview:
        msg += f" and {a.preview}"
    print(msg)
    if a.report:
        from videdit.metrics import evaluate_clips

        _print_scores(_write_report(a.report, evaluate_clips(a.input, result.output, read=_read_options(a))))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _target(a) -> str:
    """-t, then --target-suffix after ", " (Text2Video-Zero's model.py: ``prompt + ', ' + added_prompt``)."""
    return f"{a.target}, {a.target_suffix}" if a.target_suffix else a.target


def _invert(a) -> None:
    from videdit.pipeline import invert_video

    stats = invert_video(a.input, source_prompt=a.source, model=_model(a), steps=a.steps, guidance=a.guidance,
                         seed=a.seed,
                         negative_prompt=a.negative, inversion=a.inversion,
                         inversion_params=dict(a.inversion_param), read=_read_options(a), window=a.window,
                         batch_size=a.batch_size, device=a.device, dtype=a.dtype, cache_dir=a.cache_dir,
                         inversion_dtype=a.inversion_dtype, strength=a.strength, steps_offset=a.steps_offset,
                         editor=a.editor, max_tokens=a.max_tokens, control=_control(a), progress=not a.quiet)
    print(f"inverted {_count(stats.frames, 'frame')} at {stats.size[0]}x{stats.size[1]} in "
          f"{_count(stats.windows, 'window')} "
          f"({stats.cache_hits} already cached)")


def _preview(a) -> None:
    from videdit import io

    if a.output.suffix.lower() != io.GIF_SUFFIX:
        raise VideditError(f"preview writes a GIF; give -o a .gif name, not {a.output}")
    io.check_output_path(a.output, a.input)
    selected = (a.start_frame, a.end_frame, a.stride, a.start, a.end, a.fps) != (0, None, 1, None, None, None)
    if selected and a.compare is None:
        raise VideditError("--start-frame, --end-frame, --stride, --start, --end and --fps select --compare's "
                           "frames; give --compare")
    read = io.ReadOptions(max_frames=a.max_frames)
    frames, info = io.read_clip(a.input, read)
    source = None
    if a.compare:
        source = io.read_clip(a.compare, io.ReadOptions(start_frame=a.start_frame, end_frame=a.end_frame,
                                                        start_s=a.start, end_s=a.end, stride=a.stride, fps=a.fps,
                                                        max_frames=a.max_frames))[0]
    if source is not None and len(source) != len(frames):
        raise VideditError(f"--compare has {len(source)} frames{' (as selected)' if selected else ''} but {a.input} "
                           f"has {len(frames)}; select the frames the edit read with the --start, --end, "
                           f"--start-frame, --end-frame, --stride or --fps given to videdit edit")
    io.write_gif(a.output, frames, float(info.out_fps or 8), source=source, max_side=a.max_side, **info.timing(),
                 max_fps=a.max_fps, max_frames=a.gif_frames)
    print(f"wrote {a.output}")


def _check_report(path: Path | None, *others: Path) -> None:
    """Refuse, before any work, a --report its folder lacks or that names an input or output."""
    if path is None:
        return
    if not path.resolve().parent.is_dir():
        raise VideditError(f"the --report folder {path.resolve().parent} does not exist; create it or choose "
                           "another --report path")
    for other in others:
        if path.resolve() == other.resolve():
            raise VideditError(f"--report {path} is also {other}; choose another --report path")


def _write_report(path: Path, scores: dict) -> dict:
    import json

    from videdit.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(scores, indent=2) + "\n")
    return scores


def _print_scores(s: dict) -> None:
    print(f"warp error {s['warp_error']:.3f} (source {s['source_warp_error']:.3f}, ratio "
          f"{s['warp_error_ratio']:.2f}), flicker {s['flicker']:.3f} over {s['frames']} frames at "
          f"{s['size'][0]}x{s['size'][1]} ([0, 255] units)")


def _eval(a) -> None:
    from videdit.config import make_config
    from videdit.metrics import evaluate_clips
    from videdit.video.flow import FlowConfig

    config = make_config(FlowConfig, {"method": a.flow, **dict(a.flow_param)}, "--flow-param")
    _check_report(a.report, a.original, a.edited)
    scores = evaluate_clips(a.original, a.edited, read=_read_options(a), config=config)
    _print_scores(scores)
    if a.report:
        _write_report(a.report, scores)
        print(f"wrote {a.report}")


def method_registries() -> tuple:
    """(title, registry) of the inversions, editors and temporal modules, as `videdit methods` lists
    them and `videdit serve`'s advanced panel offers them."""
    from videdit.editing import EDITORS
    from videdit.inversion import INVERSIONS
    from videdit.video import TEMPORAL

    return (("inversions", INVERSIONS), ("editors", EDITORS), ("temporal modules and frame stages", TEMPORAL))


def _methods(a) -> None:
    import difflib
    import shutil
    import textwrap

    from videdit.registry import NOT_INSTRUCT

    registries = method_registries()
    known = sorted({name for _, registry in registries for name in registry})
    for name in a.names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise VideditError(f"no method named {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                               + "; `videdit methods` lists them all")
    width = max(60, shutil.get_terminal_size((100, 24)).columns - 1)
    indent = " " * 21

    def say(text: str, first: str = indent, then: str = indent + "  ") -> None:
        print(textwrap.fill(text, width, initial_indent=first, subsequent_indent=then, break_on_hyphens=False))

    for title, registry in registries:
        shown = sorted((n, spec) for n, spec in registry.items() if not a.names or n in a.names)
        if not shown:
            continue
        print(f"{title}:")
        for name, spec in shown:
            say(spec.summary, f"  {name:<18} ")
            if spec.reference:
                say(f"reference: {spec.reference}")
            if spec.edit_defaults:
                say(f"reference settings: {', '.join(f'{k}={v}' for k, v in spec.edit_defaults.items())}")
            say(f"models: {spec.model_support()}")
            for family, why in spec.refuses.items():
                if NOT_INSTRUCT.get(family) != why:   # the usual reason is said once, at the end
                    say(f"not on {family}: {why}")
            declared = spec.capabilities()
            if declared:
                say(f"declares: {', '.join(f'{k}={v}' for k, v in declared.items())}")
            options = ", ".join(f"{k}={v!r}" for k, v in spec.options())
            if options:
                say(f"options: {options}")
            for d in spec.departures():
                if d.kind == "departs":
                    say(f"departs from the reference: {d.option}={d.default!r} (reference: {d.value!r}): {d.why}")
                else:
                    say(f"videdit option: {d.option}={d.value!r} (reference and default: {d.default!r}): {d.why}")
    if not a.names:
        say(f"InstructPix2Pix models run only the methods that list them: {NOT_INSTRUCT['InstructPix2Pix']}", "", "")
        print("`videdit methods NAME` shows one.")


def _batch(a) -> int:
    from videdit.batch import edit_batch

    if a.ray is None:
        for flag, value, default in (("--workers", a.workers, None), ("--gpus-per-worker", a.gpus_per_worker, None),
                                     ("--cpus-per-worker", a.cpus_per_worker, 1)):
            if value != default:
                raise VideditError(f"{flag} sets Ray's workers; add --ray (a local cluster) or --ray ADDRESS")
    if not a.quiet:   # one display: the jobs bar and each job's one line, not every job's log lines
        logging.getLogger("videdit").setLevel(logging.WARNING)
    defaults = {"model": a.model} if a.model else {}
    report = a.report or a.jobs.with_name(a.jobs.stem + ".report.json")
    _check_report(report, a.jobs)
    result = edit_batch(a.jobs, defaults=defaults, overrides=dict(a.overrides), cache_dir=a.cache_dir, ray=a.ray,
                        workers=a.workers, gpus_per_worker=a.gpus_per_worker, cpus_per_worker=a.cpus_per_worker,
                        retries=a.retries, scores=not a.no_scores, report=report, progress=not a.quiet)
    print(result.table())
    print(result.summary())
    print(f"wrote {report}")
    return 0 if result.ok else 1


def _serve(a) -> None:
    from videdit.serve import serve

    serve(model=a.model, host=a.host, port=a.port, device=a.device, dtype=a.dtype, cache_dir=a.cache_dir,
          max_upload_mb=a.max_upload_mb, max_seconds=a.max_seconds, max_frames=a.max_frames)


COMMANDS = {"edit": _edit, "invert": _invert, "preview": _preview, "eval": _eval, "methods": _methods,
            "batch": _batch, "serve": _serve}


def _required(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """``edit`` needs a target prompt: -t, or a --config file's ``target:`` (the presets `videdit serve`
    writes give it)."""
    if args.command == "edit" and args.target is None:
        parser.error("the following arguments are required: -t/--target")
    return args


def _with_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse twice when --config is given: the file's values become defaults, flags win.
    Its keys are option names (``guidance``, ``inversion``, ``inversion_params: {...}``, ``control:
    [canny]``, ``controlnet: [lllyasviel/sd-controlnet-canny]``; a --control or --controlnet flag
    replaces the file's list, as they pair by position)."""
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None:
        return _required(parser, args)
    import yaml

    from videdit.config import preset_path

    args.config = preset_path(args.config)
    try:
        values = yaml.safe_load(args.config.read_text()) or {}
    except OSError as e:
        raise VideditError(f"cannot read config {args.config}: {e}") from e
    except yaml.YAMLError as e:
        raise VideditError(f"config {args.config} is not valid YAML: {_yaml_problem(e)}") from e
    if not isinstance(values, dict):
        raise VideditError(f"config {args.config} must be a mapping of option: value")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    renamed = {"inversion_params": "inversion_param", "editor_params": "editor_param"}
    choices = parser._subparsers._group_actions[0].choices
    sub = choices[args.command]  # the subcommand's parser
    known = {a.dest for a in sub._actions}
    if args.command == "invert":   # a preset describes an edit: invert takes its inversion's options
        edit_only = {a.dest for a in choices["edit"]._actions} - known
        values = {k: v for k, v in values.items() if renamed.get(k, k) not in edit_only}
    unknown = sorted(k for k in values if renamed.get(k, k) not in known)
    if unknown:
        raise VideditError(f"config {args.config}: unknown option(s) {', '.join(unknown)}")
    defaults = {renamed.get(k, k): v for k, v in values.items()}
    for k in ("inversion_param", "editor_param"):
        if k in defaults:
            if not isinstance(defaults[k], dict):
                raise VideditError(f"config {args.config}: {k}s must be a mapping")
            defaults[k] = list(defaults[k].items())
    for k in ("control", "controlnet"):   # a list (or one entry); pairs by position, so flags replace it
        if k in defaults:
            v = defaults[k]
            v = [v] if isinstance(v, str) else v
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise VideditError(f"config {args.config}: {k} must be a list of --{k} values")
            defaults[k] = [] if getattr(args, k) else v   # a --control/--controlnet given here wins
    if "temporal" in defaults:  # {name: {options} or null} -> [(name, options)], as --temporal gives
        t = defaults["temporal"] or {}
        if not isinstance(t, dict) or not all(isinstance(v, dict) or v is None for v in t.values()):
            raise VideditError(f"config {args.config}: temporal must map module names to their options")
        defaults["temporal"] = [(name, dict(v or {})) for name, v in t.items()]
    sub.set_defaults(**defaults)
    return _required(parser, parser.parse_args(argv))  # -I/-E append to the file's options; later entries win in dict()


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    """videdit's own warnings (a damaged input, a fallback) in one line, as its errors; others as Python shows
    them."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        print(f"videdit: warning: {message}", file=sys.stderr if file is None else file)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    with warnings.catch_warnings():   # the caller's warning display comes back after the command
        warnings.showwarning = _show_warning
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = _with_config(parser, sys.argv[1:] if argv is None else argv)
    except VideditError as e:
        print(f"videdit: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="videdit: %(message)s")
    for noisy in ("httpx", "huggingface_hub", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # stderr a file or a pipe: the bars as lines; `serve`'s none at all (its page shows them, its log a line a run)
    log = not sys.stderr.isatty()
    if args.quiet or log:   # the hub's and transformers' own bars (loading weights) too; read when imported
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from tqdm.contrib.logging import logging_redirect_tqdm

    from videdit.progress import bars_as_lines

    try:
        with logging_redirect_tqdm(), bars_as_lines(log, silent=args.command == "serve"):
            code = COMMANDS[args.command](args)
    except VideditError as e:
        print(f"videdit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("videdit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # `videdit methods | head`: the reader has what it wanted
        # Python flushes stdout again at exit, into the closed pipe; its output goes nowhere instead
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141   # as a shell reports a command a SIGPIPE ended (128 + 13)
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
