"""Checkpoints as people have them: one original-layout ``.safetensors``/``.ckpt`` file, LoRA
files, textual-inversion embeddings and a replacement VAE, applied to a loaded model's parts.

LoRAs are fused into the weights here (``W += scale * alpha / rank * up @ down``) rather than
through diffusers' ``load_lora_weights``, which needs ``peft``; the file's layer names are
matched against the model's own modules, so a LoRA for another architecture is refused by
the first layer the model lacks or whose shape differs.
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from videdit.errors import VideditError

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class Lora:
    """A LoRA file and the scale its update is added at (0: no change)."""

    path: Path
    scale: float = 1.0

    @classmethod
    def parse(cls, spec: str | Path | tuple | Lora) -> Lora:
        """``"FILE"``, ``"FILE=SCALE"``, ``(FILE, SCALE)`` or a ``Lora``."""
        if isinstance(spec, Lora):
            return spec
        if isinstance(spec, tuple):
            return cls(Path(spec[0]), float(spec[1]))
        text = str(spec)
        path, sep, scale = text.rpartition("=")
        if sep and not Path(text).exists():
            try:
                return cls(Path(path), float(scale))
            except ValueError:
                if path.lower().endswith(CHECKPOINT_SUFFIXES):
                    raise VideditError(f"--lora {text!r}: the scale after '=' must be a number, e.g. "
                                       f"--lora {path}=0.8") from None
        return cls(Path(text))  # no scale, or an '=' in the file's name


def file_fingerprint(path: Path) -> str:
    """A file's size and mtime (cheap; a weight file changes both when rewritten)."""
    st = Path(path).stat()
    return f"{Path(path).name}:{st.st_size}:{st.st_mtime_ns}"


def combine_fingerprint(base: str, extras: list[str]) -> str:
    """The model's fingerprint with what was applied on top (LoRAs and scales, embeddings, VAE)."""
    if not extras:
        return base
    return hashlib.sha256("\n".join([base, *extras]).encode()).hexdigest()[:16]


def _read_state_dict(path: Path, what: str, fix: str) -> dict:
    """A weights file -> its tensors, or one line saying it is not one."""
    from diffusers.models.model_loading_utils import load_state_dict

    if not path.is_file():
        raise VideditError(f"no {what} at {str(path)!r}; {fix}")
    try:
        state = load_state_dict(str(path))
    except Exception as e:  # not safetensors, not a torch pickle, truncated, ...
        raise VideditError(f"{path} is not a {what} file (cannot read it as safetensors or a torch "
                           f"checkpoint: {type(e).__name__}); {fix}") from e
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise VideditError(f"{path} holds no tensors, so it is not a {what} file; {fix}")
    return state


# -- single-file checkpoints -------------------------------------------------------------

@contextmanager
def _quiet_diffusers():
    """No "Loading pipeline components" bar or info lines while a single file loads; the
    library's settings are restored in ``finally``."""
    from diffusers.utils import logging as diffusers_logging

    level, bar = diffusers_logging.get_verbosity(), diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
        if bar:
            diffusers_logging.enable_progress_bar()


def is_single_file(spec: str) -> bool:
    return Path(spec).is_file() and Path(spec).suffix.lower() in CHECKPOINT_SUFFIXES


def _checkpoint_keys(path: Path) -> list[str]:
    """A checkpoint's tensor names, read without loading the tensors where the format allows."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                return list(f.keys())
        except Exception as e:
            raise VideditError(f"{path} is not a model checkpoint (not a readable safetensors file: "
                               f"{type(e).__name__}); give a .safetensors/.ckpt Stable Diffusion "
                               f"checkpoint or a diffusers directory") from e
    return list(_read_state_dict(path, "model checkpoint", "give a .safetensors/.ckpt Stable Diffusion "
                                 "checkpoint or a diffusers directory"))


def load_single_file(path: Path, config: str | Path | None = None) -> dict:
    """An original-layout (CompVis/A1111/Civitai) SD 1.x/2.x checkpoint -> the parts ``Model`` holds,
    through diffusers' ``StableDiffusionPipeline.from_single_file``; an SDXL one (Stability's SGM
    layout, ``conditioner.embedders.*``) through :func:`load_single_file_sdxl`.

    ``config``: a diffusers directory (or hub id) of the same architecture, or the original
    YAML; without it diffusers infers the architecture from the weights and reads its config
    from the hub (or the hub's local cache).
    """
    from diffusers import StableDiffusionPipeline

    keys = _checkpoint_keys(path)
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        kind = ("a LoRA (use --lora)" if any("lora" in k for k in keys) else
                "a VAE (use --vae)" if any(k.startswith(("encoder.", "decoder.")) for k in keys) else
                "not a Stable Diffusion checkpoint")
        raise VideditError(f"{path} is {kind}: it has no UNet weights (model.diffusion_model.*); "
                           f"--model takes a full SD 1.x/2.x checkpoint or a diffusers directory")
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return load_single_file_sdxl(path, keys, config)
    kw: dict = {"safety_checker": None, "requires_safety_checker": False}
    if config is not None:
        config = str(config)
        if config.endswith((".yaml", ".yml")):
            kw["original_config"] = config
        else:
            kw["config"] = config
            kw["local_files_only"] = Path(config).exists()
    try:
        with _quiet_diffusers():
            pipe = StableDiffusionPipeline.from_single_file(str(path), **kw)
    except Exception as e:  # config unreachable offline, weights of another shape, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ("check that --model-config is the same architecture as the checkpoint" if config else
                "pass --model-config DIR (a diffusers SD directory of the same architecture, e.g. "
                "stable-diffusion-v1-5 saved locally) or the checkpoint's original .yaml")
        raise VideditError(f"cannot load the checkpoint {path}: {first}; {hint}") from e
    _check_complete(path, pipe)
    return {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder, "tokenizer": pipe.tokenizer,
            "scheduler_config": dict(pipe.scheduler.config)}


def _check_complete(path: Path, pipe) -> None:
    """Refuse a checkpoint that lacks tensors of its UNet, VAE or text encoder. Without
    ``accelerate``, ``from_single_file`` loads each part with ``strict=False``, so a missing tensor
    keeps its random initial value without a word; this converts the file again with the same
    diffusers converters and compares the names with each part's parameters."""
    from diffusers.loaders import single_file_utils as sfu

    checkpoint = _read_state_dict(path, "model checkpoint", "")
    with _quiet_diffusers():
        if "cond_stage_model.model.text_projection" in checkpoint:   # SD 2.x: OpenCLIP's text tower
            text = sfu.convert_open_clip_checkpoint(pipe.text_encoder, checkpoint)
        else:
            text = sfu.convert_ldm_clip_checkpoint(checkpoint)
        names = {"unet": sfu.convert_ldm_unet_checkpoint(checkpoint, pipe.unet.config),
                 "vae": sfu.convert_ldm_vae_checkpoint(checkpoint, pipe.vae.config),
                 "text_encoder": {k.removeprefix("text_model.") for k in text}}
    for part, found in names.items():
        missing = sorted(n.removeprefix("text_model.") for n, _ in getattr(pipe, part).named_parameters()
                         if n.removeprefix("text_model.") not in found)
        if missing:
            raise VideditError(f"{path} is an incomplete checkpoint: its {part} lacks {len(missing)} tensor(s) "
                               f"(e.g. {missing[0]}); re-download or re-export the file")


SDXL_CONFIG_FILES = ["model_index.json", "*/config.json", "scheduler/scheduler_config.json", "tokenizer*/*"]
SDXL_FIX = ("pass --model-config DIR (a diffusers SDXL directory of the same architecture, e.g. "
            "stable-diffusion-xl-base-1.0 saved locally)")


def load_single_file_sdxl(path: Path, keys: list[str], config: str | Path | None = None) -> dict:
    """An SDXL checkpoint in Stability's original (SGM) layout -> the parts ``Model`` holds.

    ``config``: a diffusers SDXL directory or hub id of the same architecture (its part configs,
    tokenizers and scheduler); without it, the hub repo diffusers infers from the weights
    (``single_file_utils.fetch_diffusers_config``: ``stabilityai/stable-diffusion-xl-base-1.0`` for
    SDXL base), its configs alone fetched into the Hugging Face cache (offline: read from it).

    Each part is converted by diffusers' single-file converters (what
    ``StableDiffusionXLPipeline.from_single_file`` runs: ``convert_ldm_unet_checkpoint``,
    ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint`` and, for the OpenCLIP
    ``conditioner.embedders.1``, ``convert_open_clip_checkpoint``) and loaded strictly. Not the
    pipeline call itself: without ``accelerate`` it loads with ``strict=False``, so a tensor the
    file lacks stays random without a word, and it picks each text encoder's weights by width
    (``create_diffusers_clip_model_from_ldm``), so where both encoders are as wide (tiny-sdxl) the
    second one receives the first one's weights (measured: tiny-sdxl's text_encoder_2 off by 0.89).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if not any(k.startswith("conditioner.embedders.1.") for k in keys):
        raise VideditError(f"{path} is an SDXL refiner checkpoint (its one text encoder is OpenCLIP's): videdit "
                           f"edits with a text-to-image SDXL model, e.g. sd_xl_base_1.0.safetensors")
    fix = "give a .safetensors/.ckpt Stable Diffusion checkpoint or a diffusers directory"
    checkpoint = _read_state_dict(path, "model checkpoint", fix)
    if config is None:
        kind = sfu.infer_diffusers_model_type(checkpoint)
        if kind == "xl_inpaint":
            raise VideditError(f"{path} is an SDXL inpainting checkpoint (9-channel UNet); videdit edits with a "
                               f"text-to-image SDXL model")
        kind = kind if kind in ("xl_base", "playground-v2-5") else "xl_base"
        config = sfu.DIFFUSERS_DEFAULT_PIPELINE_PATHS[kind]["pretrained_model_name_or_path"]
        root = _config_directory(config)
    elif str(config).endswith((".yaml", ".yml")):
        raise VideditError(f"--model-config {config}: an SDXL checkpoint's architecture is read from a diffusers "
                           f"SDXL directory or hub id, not the original YAML; {SDXL_FIX}")
    else:
        root = Path(config) if Path(config).is_dir() else _config_directory(str(config))
    if not (root / "text_encoder_2").is_dir():
        raise VideditError(f"--model-config {config} is not a diffusers SDXL directory (no text_encoder_2/); "
                           f"{SDXL_FIX}")
    try:
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2"))
        tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
        tokenizer_2 = CLIPTokenizer.from_pretrained(root / "tokenizer_2")
        scheduler_config = dict(DDIMScheduler.load_config(root / "scheduler"))
        index = json.loads((root / "model_index.json").read_text())
    except (OSError, ValueError) as e:
        raise VideditError(f"cannot read the SDXL config in {root}: {e}".splitlines()[0] + f"; {SDXL_FIX}") from e
    with _quiet_diffusers():
        states = {
            "unet": sfu.convert_ldm_unet_checkpoint(checkpoint, unet.config),
            "vae": sfu.convert_ldm_vae_checkpoint(checkpoint, vae.config),
            "text_encoder": {k.removeprefix("text_model."): v for k, v in sfu.convert_ldm_clip_checkpoint(
                {k: v for k, v in checkpoint.items() if k.startswith("conditioner.embedders.0.")}).items()},
            "text_encoder_2": sfu.convert_open_clip_checkpoint(text_encoder_2, checkpoint,
                                                               prefix="conditioner.embedders.1.model."),
        }
    parts = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    for name, module in parts.items():
        try:
            module.load_state_dict(states[name], strict=True)
        except RuntimeError as e:   # missing or unexpected tensors, or shapes of another architecture
            first = str(e).strip().splitlines()
            detail = first[1].strip() if len(first) > 1 else first[0]
            raise VideditError(f"cannot load the checkpoint {path}: its {name} does not fit the config in {root} "
                               f"({detail[:200]}); check that --model-config is the same architecture as the "
                               f"checkpoint") from e
    return {**parts, "tokenizer": tokenizer, "tokenizer_2": tokenizer_2, "scheduler_config": scheduler_config,
            "zero_empty_negative": bool(index.get("force_zeros_for_empty_prompt", True))}


def _config_directory(repo_id: str) -> Path:
    """A hub SDXL repo's configs and tokenizers (no weights), in the Hugging Face cache."""
    from videdit.models.loading import _download

    return _download(repo_id, patterns=SDXL_CONFIG_FILES, alternatives=SDXL_FIX)


# -- VAE -------------------------------------------------------------------------------

def load_vae(spec: str | Path, like):
    """A replacement VAE: a diffusers ``AutoencoderKL`` directory (or an SD directory with
    ``vae/``), or a single file in the original or diffusers layout shaped like ``like``."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    path = Path(spec)
    fix = "give a diffusers AutoencoderKL directory or a VAE .safetensors/.ckpt of the model's architecture"
    if path.is_dir():
        sub = path / "vae" if (path / "vae" / "config.json").exists() else path
        try:
            return AutoencoderKL.from_pretrained(sub, low_cpu_mem_usage=False)
        except (OSError, ValueError) as e:
            raise VideditError(f"cannot load the VAE in {path}: {e}".splitlines()[0] + f"; {fix}") from e
    state = _read_state_dict(path, "VAE", fix)
    vae = AutoencoderKL.from_config(like.config)
    if set(state) != set(vae.state_dict()):  # the original (LDM) layout, maybe inside a full checkpoint
        state = convert_ldm_vae_checkpoint(state, vae.config)
    try:
        vae.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise VideditError(f"{path} is not a VAE for this model ({str(e).splitlines()[0]}); {fix}") from e
    return vae.to(like.dtype)


# -- LoRA ------------------------------------------------------------------------------

_KOHYA = re.compile(r"^lora_(unet|te1?|te2)_(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$")
_DIFFUSERS = re.compile(r"^(unet|text_encoder(?:_2)?)\.(.+?)\.(lora_A\.weight|lora_B\.weight|lora\.down\.weight|"
                        r"lora\.up\.weight|lora_linear_layer\.down\.weight|lora_linear_layer\.up\.weight|alpha)$")
_ATTN_PROCS = re.compile(r"^(?:unet\.)?(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_PARTS = {"unet": "unet", "te": "text_encoder", "te1": "text_encoder", "te2": "text_encoder_2",
          "text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2"}


def _flat(name: str) -> str:
    """A module path in kohya's spelling (dots as underscores), without transformers'
    ``text_model.`` level, which transformers 5 no longer has."""
    return name.removeprefix("text_model.").replace(".", "_").removeprefix("text_model_")


def _lora_layers(state: dict, path: Path) -> dict[tuple[str, str], dict]:
    """A LoRA state dict in kohya, diffusers/peft or attention-processor layout ->
    {(part, flat module name): {"down", "up", "alpha"}}."""
    layers: dict[tuple[str, str], dict] = {}
    for key, value in state.items():
        if m := _KOHYA.match(key):
            part, name, kind = _PARTS[m[1]], _flat(m[2]), m[3]
        elif m := _DIFFUSERS.match(key):
            part, name, kind = _PARTS[m[1]], _flat(m[2]), m[3]
        elif m := _ATTN_PROCS.match(key):
            part, name, kind = "unet", _flat(f"{m[1]}.{m[2]}" + (".0" if m[2] == "to_out" else "")), m[3]
        else:
            raise VideditError(f"{path} is not a LoRA file videdit reads (tensor {key!r} is neither kohya's "
                               f"lora_down/lora_up nor diffusers' lora_A/lora_B); give a LoRA .safetensors")
        kind = "alpha" if kind == "alpha" else "down" if ("down" in kind or "lora_A" in kind) else "up"
        layers.setdefault((part, name), {})[kind] = value
    return layers


def apply_lora(parts: dict, lora: Lora) -> None:
    """Fuse ``lora`` into ``parts``' weights in place: ``W += scale * alpha / rank * up @ down``
    (alpha defaults to the rank, as in diffusers)."""
    fix = "use a LoRA trained for this model's architecture (SD 1.x LoRAs on SD 1.x models)"
    state = _read_state_dict(lora.path, "LoRA", fix)
    layers = _lora_layers(state, lora.path)
    modules = {part: {_flat(n): m for n, m in module.named_modules() if hasattr(m, "weight")}
               for part, module in parts.items()}   # unet, text_encoder, and SDXL's text_encoder_2
    updates = []
    for (part, name), t in layers.items():
        if "down" not in t or "up" not in t:
            raise VideditError(f"{lora.path} is a broken LoRA: layer {name} has no "
                               f"{'lora_up' if 'down' in t else 'lora_down'} weight")
        module = modules.get(part, {}).get(name)
        if module is None:
            raise VideditError(f"{lora.path} is a LoRA for another architecture: this model has no "
                               f"{part} layer {name!r}; {fix}")
        down, up = t["down"].float().flatten(1), t["up"].float().flatten(1)  # (r, in*k*k), (out, r)
        rank = down.shape[0]
        if up.shape[1] != rank or up.shape[0] * down.shape[1] != module.weight.numel():
            raise VideditError(f"{lora.path} is a LoRA for another architecture: its {part} layer {name} is "
                               f"{tuple(up.shape[:1]) + tuple(down.shape[1:])}, the model's "
                               f"{tuple(module.weight.shape)}; {fix}")
        alpha = float(t["alpha"]) if "alpha" in t else rank
        updates.append((module, (up @ down).reshape(module.weight.shape) * (lora.scale * alpha / rank)))
    with torch.no_grad():  # every layer checked first: a refused LoRA leaves the model as it was
        for module, delta in updates:
            module.weight += delta.to(module.weight.dtype)


# -- textual inversion -----------------------------------------------------------------

SDXL_EMBEDDING = ("clip_l", "clip_g")   # an SDXL embedding's vectors for text_encoder and text_encoder_2


def load_embedding(path: Path) -> tuple[str, torch.Tensor]:
    """A textual-inversion file -> (token, vectors (n, D)): diffusers' ``{token: (D,)}``, A1111's
    ``string_to_param`` .pt (token: its ``name``, else the file name) or ``emb_params``."""
    fix = "give a textual-inversion .pt/.bin/.safetensors for an SD 1.x/2.x text encoder"
    state = _read_state_dict(path, "textual-inversion embedding", fix)
    found = _sd_embedding(state, path)
    if found is None:
        if set(SDXL_EMBEDDING) <= set(state):
            raise VideditError(f"{path} is an SDXL embedding (clip_l and clip_g vectors, one per text encoder): "
                               f"use it with an SDXL model, or give an embedding for an SD 1.x/2.x text encoder")
        keys = sorted(state)[:3]
        raise VideditError(f"{path} is not a textual-inversion embedding (tensors {keys}...): {fix}")
    return found


def _sd_embedding(state: dict, path: Path) -> tuple[str, torch.Tensor] | None:
    """One text encoder's embedding in ``state`` -> (token, vectors (n, D)); None where it is not one."""
    if "string_to_param" in state:  # A1111
        token, vectors = str(state.get("name") or path.stem), next(iter(state["string_to_param"].values()))
    elif "emb_params" in state:
        token, vectors = path.stem, state["emb_params"]
    elif len(state) == 1 and torch.is_tensor(next(iter(state.values()))):  # diffusers
        token, vectors = next(iter(state.items()))
    else:
        return None
    vectors = vectors.detach().float()
    return token, vectors.reshape(-1, vectors.shape[-1])


def load_sdxl_embedding(path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """An SDXL textual-inversion file -> (token: the file's name, as A1111 names them,
    {"clip_l": (n, D1), "clip_g": (n, D2)}): the vectors for the first and the second text encoder,
    the layout SDXL embeddings are shared in and diffusers' SDXL ``load_textual_inversion`` is
    given, once per encoder (its docs: ``state_dict["clip_g"]`` with ``text_encoder_2``)."""
    fix = "give an SDXL textual-inversion .safetensors (clip_l and clip_g vectors)"
    state = _read_state_dict(path, "textual-inversion embedding", fix)
    if not set(SDXL_EMBEDDING) <= set(state):
        found = _sd_embedding(state, path)
        if found is not None:
            raise VideditError(f"{path} is an embedding for one text encoder ({found[1].shape[1]} values per vector, "
                               f"SD 1.x/2.x's layout), and an SDXL model has two; {fix}")
        raise VideditError(f"{path} is not a textual-inversion embedding (tensors {sorted(state)[:3]}...): {fix}")
    vectors = {k: state[k].detach().float().reshape(-1, state[k].shape[-1]) for k in SDXL_EMBEDDING}
    if len(vectors["clip_l"]) != len(vectors["clip_g"]):
        raise VideditError(f"{path} is a broken SDXL embedding: {len(vectors['clip_l'])} clip_l vectors and "
                           f"{len(vectors['clip_g'])} clip_g ones")
    return path.stem, vectors


def add_embedding(parts: dict, path: Path) -> dict[str, str]:
    """Add ``path``'s token(s) to the tokenizer and their vectors to the text encoder; on SDXL
    (``parts`` with ``text_encoder_2``) to both tokenizers and encoders, the ``clip_l`` vectors to
    the first and the ``clip_g`` ones to the second, as diffusers' SDXL ``load_textual_inversion``
    does when called once per encoder. A multi-vector embedding adds ``token``, ``token_1``, ...;
    returns {token: the words it expands to in a prompt} for :meth:`Model.encode_text`. Every check
    comes before any change, so a refused file leaves the model as it was."""
    if parts.get("text_encoder_2") is not None:
        token, tables = load_sdxl_embedding(path)
        targets = [(parts["tokenizer"], parts["text_encoder"], tables["clip_l"], " clip_l"),
                   (parts["tokenizer_2"], parts["text_encoder_2"], tables["clip_g"], " clip_g")]
    else:
        token, vectors = load_embedding(path)
        targets = [(parts["tokenizer"], parts["text_encoder"], vectors, "")]
    words = [token] + [f"{token}_{i}" for i in range(1, len(targets[0][2]))]
    for tokenizer, encoder, vectors, what in targets:
        width = encoder.get_input_embeddings().weight.shape[1]
        if vectors.shape[1] != width:
            raise VideditError(f"{path} is an embedding for another text encoder: its{what} vectors have "
                               f"{vectors.shape[1]} values, this model's {width}")
        if any(w in tokenizer.get_vocab() for w in words):
            raise VideditError(f"the token {token!r} of {path} is already in the tokenizer; "
                               "rename the file or load each embedding once")
    for tokenizer, encoder, vectors, _ in targets:
        tokenizer.add_tokens(words)
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the new rows are overwritten below
        ids = tokenizer.convert_tokens_to_ids(words)
        table = encoder.get_input_embeddings()
        with torch.no_grad():
            table.weight[ids] = vectors.to(table.weight.dtype)
    return {token: " ".join(words)} if len(words) > 1 else {}
