"""``load_model(spec)``: a hub id, a local diffusers Stable Diffusion (1.x, 2.x or XL) directory, a
single ``.safetensors``/``.ckpt`` checkpoint, or a built-in model name -> a :class:`Model` holding the
parts videdit needs, with LoRAs, textual-inversion embeddings and a replacement VAE applied
(``videdit.models.checkpoints``).

Only the UNet, VAE, text encoder(s), tokenizer(s) and scheduler *config* are kept; sampling is
videdit's own (``videdit.core``), so the diffusers pipeline object is never built.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from videdit.core.conditioning import is_sdxl, pack_pooled, set_pixels_per_latent
from videdit.editing.words import spaced_words
from videdit.errors import VideditError
from videdit.models import checkpoints, speed, tiny
from videdit.registry import DEFAULT_MODEL

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
          "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}

TOY_DIR = Path(__file__).resolve().parents[1] / "toy" / "model"   # package data: installed with videdit
TOY_PIX2PIX_DIR = TOY_DIR.parent / "pix2pix"   # "toy-pix2pix": the toy model with this 8-channel UNet
TOY_MODELS = ("toy", "toy-pix2pix")
BUILTIN = {"tiny-random": "SD architecture, ~1.8M parameters, random weights: for tests and benchmarks only",
           "tiny-pix2pix": "InstructPix2Pix architecture (8-channel UNet) at diffusers' test sizes, random weights",
           "tiny-sdxl": "SDXL architecture, ~2.7M parameters, random weights: for tests and benchmarks only"}
TOKEN_BUDGET_FACTOR = 4  # Model.token_budget: this many times the native square's latent tokens,
MIN_TOKEN_BUDGET = 16384  # and at least this many (SD 1.x's 4 x 64 x 64)
TEXT_CACHE_SIZE = 64  # prompts whose embeddings a model remembers (SD1.5: 77 x 768 values each)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" picks CUDA, then MPS, then CPU."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as e:
        raise VideditError(f"unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto") from e
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise VideditError(f"device {device!r}: this torch sees no CUDA GPU (a CPU build, or no driver); "
                           "use --device cpu or auto")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise VideditError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                           f"numbered from 0; use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    mps = getattr(torch.backends, "mps", None)
    if chosen.type == "mps" and not (mps is not None and mps.is_available()):
        raise VideditError(f"device {device!r}: this torch has no MPS (Apple GPU) support here; "
                           "use --device cpu or auto")
    return chosen


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise VideditError(f"unknown dtype {dtype!r}; choose from fp32, fp16, bf16")
    return DTYPES[dtype]


@dataclass(frozen=True)
class Geometry:
    """What the working size and the memory budget need of a model, readable from its UNet and
    VAE configs before any weight loads (:func:`peek_geometry`)."""

    name: str
    latent_side: int | None      # the UNet config's sample_size: the side it was trained at, in latents
    vae_scale_factor: int
    dtype: torch.dtype = torch.float32

    @classmethod
    def of(cls, name: str, unet_config, vae_config, dtype: torch.dtype = torch.float32) -> Geometry:
        side = getattr(unet_config, "sample_size", None) if not isinstance(unet_config, dict) \
            else unet_config.get("sample_size")
        side = min(side) if isinstance(side, (tuple, list)) else side
        blocks = vae_config["block_out_channels"] if isinstance(vae_config, dict) else vae_config.block_out_channels
        return cls(name=name, latent_side=int(side) if side else None, vae_scale_factor=2 ** (len(blocks) - 1),
                   dtype=dtype)

    @property
    def native_size(self) -> int:
        """The side in pixels the model was trained at, from its UNet config: ``sample_size`` (the
        latent side) x the VAE's factor: 64 x 8 = 512 for SD 1.x (and tiny-random, which stands in for
        it), 96 x 8 = 768 for SD 2.x (v), 128 x 8 = 1024 for SDXL; toy's 16 x 4 = 64. Edits work at it by
        default (short side); 512 where the config does not say."""
        return self.latent_side * self.vae_scale_factor if self.latent_side else 512

    @property
    def token_budget(self) -> int:
        """The default most latent tokens (h x w) per frame an edit may work at: 4x the native
        square's, at least ``MIN_TOKEN_BUDGET``: 16384 for SD 1.x (1024x1024, or 768x1365 pixels)
        and SD 2.x, 65536 for SDXL. The UNet's first self-attention runs over every token, so its
        cost grows with their square (1080p on SD 1.x: 240x135 = 32400 tokens); beyond this a
        model also leaves its training distribution (repeated subjects)."""
        return max(MIN_TOKEN_BUDGET, TOKEN_BUDGET_FACTOR * (self.native_size // self.vae_scale_factor) ** 2)


@dataclass
class Model:
    """A text-to-image latent diffusion model's parts, on one device and dtype. SDXL models also
    hold their second text encoder (with a projection: the pooled embedding) and tokenizer, and
    whether an empty negative prompt is zeros (``zero_empty_negative``: the pipeline's
    ``force_zeros_for_empty_prompt``, true for SDXL base)."""

    name: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict
    fingerprint: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    prompt_words: dict[str, str] = field(default_factory=dict)   # a multi-vector embedding's token -> its words
    text_encoder_2: CLIPTextModelWithProjection | None = None    # SDXL's second text encoder
    tokenizer_2: CLIPTokenizer | None = None
    zero_empty_negative: bool = False
    compile_clock: speed.CompileClock | None = field(default=None, repr=False, compare=False)   # where compiled
    _text_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    _text_cache_for: tuple = field(default=(), repr=False, compare=False)   # the encoder, device and dtype it holds

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def family(self) -> str:
        """Its family among ``videdit.registry.MODEL_FAMILIES``: SDXL (pooled text and time ids),
        InstructPix2Pix (8 input channels: the latents and the source image's), SD2 (1024-wide
        OpenCLIP text), else SD1."""
        if is_sdxl(self.unet):
            return "SDXL"
        if self.unet.config.in_channels == 8:
            return "InstructPix2Pix"
        return "SD2" if self.unet.config.cross_attention_dim == 1024 else "SD1"

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def geometry(self) -> Geometry:
        return Geometry.of(self.name, self.unet.config, self.vae.config, self.dtype)

    @property
    def native_size(self) -> int:
        return self.geometry.native_size

    @property
    def token_budget(self) -> int:
        return self.geometry.token_budget

    @property
    def latent_channels(self) -> int:
        """Channels of the VAE's latents (4 for SD 1.x/2.x/XL; InstructPix2Pix's UNet takes 8: these and
        the source image's)."""
        return int(self.vae.config.latent_channels)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def scheduler(self) -> DDIMScheduler:
        return DDIMScheduler.from_config(self.scheduler_config)

    @torch.no_grad()
    def encode_text(self, prompts: list[str], remember: bool = True) -> torch.Tensor:
        """Prompts -> CLIP hidden states (B, L, D), padded to the tokenizer's max length. SDXL: as
        ``StableDiffusionXLPipeline.encode_prompt`` (no clip skip): both encoders' penultimate
        hidden states side by side (B, L, D1 + D2), with the second encoder's projected embedding
        (its pooled one) packed as an extra last row (:func:`~videdit.core.conditioning.pack_pooled`):
        (B, L + 1, D1 + D2).

        Each distinct prompt is encoded on its own and remembered, so a prompt's embedding
        is the same to the last bit whichever prompts share the call. A GPU's kernels round
        differently at different batch sizes, and an exact inversion replays only if the
        source prompt's embedding while editing is the one it was inverted with
        (docs/methods.md). ``remember=False``: encoded alike, not kept (many sentences, once).
        """
        made_by = (id(self.text_encoder), id(self.tokenizer), id(self.text_encoder_2), self.device, self.dtype)
        if self._text_cache_for != made_by:   # another encoder, tokenizer, device or dtype: start afresh
            self._text_cache.clear()
            self._text_cache_for = made_by
        if not remember:
            return torch.stack([self._encode(p).to(self.dtype) for p in prompts])
        found = {}
        for prompt in dict.fromkeys(prompts):
            if prompt not in self._text_cache:
                self._text_cache[prompt] = self._encode(prompt).to(self.dtype)
            found[prompt] = self._text_cache[prompt] = self._text_cache.pop(prompt)  # now the most recent
        while len(self._text_cache) > TEXT_CACHE_SIZE:
            self._text_cache.pop(next(iter(self._text_cache)))  # the least recently used
        return torch.stack([found[p] for p in prompts])

    def _encode(self, prompt: str) -> torch.Tensor:
        """One prompt -> (L, D), or SDXL's (L + 1, D1 + D2) (:meth:`encode_text`)."""
        def ids(tokenizer) -> torch.Tensor:   # (1, L)
            return tokenizer([self._expand(prompt)], padding="max_length", truncation=True,
                             max_length=tokenizer.model_max_length, return_tensors="pt").input_ids.to(self.device)

        if self.text_encoder_2 is None:
            return self.text_encoder(ids(self.tokenizer))[0][0]
        first = self.text_encoder(ids(self.tokenizer), output_hidden_states=True)
        second = self.text_encoder_2(ids(self.tokenizer_2), output_hidden_states=True)
        hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)   # (1, L, D1 + D2)
        return pack_pooled(hidden, second.text_embeds)[0]                                # (L + 1, D1 + D2)

    def encode_negative(self, prompt: str) -> torch.Tensor:
        """The unconditional embedding (1, L, D) of negative prompt ``prompt``: as :meth:`encode_text`,
        except that an empty one is zeros on a model with ``zero_empty_negative`` (SDXL base), as
        ``StableDiffusionXLPipeline`` does where no negative prompt is given
        (``force_zeros_for_empty_prompt``). videdit's negative prompt is "" where none is given, so
        "" here means none; the source and target prompts are always encoded."""
        text = self.encode_text([prompt])
        return torch.zeros_like(text) if self.zero_empty_negative and prompt == "" else text

    def tokens(self, prompt: str) -> list[str]:
        """The prompt's tokens as the text encoder sees them, start/end tokens included."""
        ids = self.tokenizer(self._expand(prompt), truncation=True,
                             max_length=self.tokenizer.model_max_length).input_ids
        return self.tokenizer.convert_ids_to_tokens(ids)

    def spaced_words(self, prompt: str) -> list[tuple[str, list[int]]]:
        """[(word, token positions)] for each word of the prompt split at whitespace (multi-vector
        embeddings expanded), the tokens grouped by their decoded length as prompt-to-prompt's
        ``seq_aligner.get_word_inds`` groups them (punctuation stays with its word); positions
        index the rows of the encoded prompt."""
        words = self._expand(prompt).split()
        ids = self.tokenizer(" ".join(words), truncation=True, max_length=self.tokenizer.model_max_length).input_ids
        pieces = [self.tokenizer.decode([i]).strip("#") for i in ids[1:-1]]
        return list(zip(words, spaced_words(words, pieces)))

    def _expand(self, prompt: str) -> str:
        """Each multi-vector embedding's token -> its tokens (``tok`` -> ``tok tok_1 tok_2``)."""
        for token, words in self.prompt_words.items():
            prompt = re.sub(rf"(?<!\S){re.escape(token)}(?!\S)", words, prompt)
        return prompt

    @torch.no_grad()
    def encode_images(self, frames: np.ndarray, batch_size: int = 8) -> torch.Tensor:
        """uint8 frames (F, H, W, 3) -> scaled latents (F, C, H/s, W/s) (the posterior mean,
        so encoding is deterministic), laid out contiguously (the pixels' permuted view would leave
        them channels-last, and convolutions round differently on the two layouts)."""
        out = []
        for i in range(0, len(frames), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(frames[i:i + batch_size])).to(self.device)
            x = x.permute(0, 3, 1, 2).to(self.vae.dtype) / 127.5 - 1  # (B, 3, H, W) in [-1, 1]
            out.append((self.vae.encode(x).latent_dist.mean * self.scaling_factor).to(self.dtype))
        return torch.cat(out).contiguous()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch_size: int = 8) -> np.ndarray:
        """Scaled latents (F, C, h, w) -> uint8 frames (F, H, W, 3); the same frames for the same
        latents in any memory layout."""
        out = []
        for i in range(0, len(latents), batch_size):
            z = latents[i:i + batch_size].to(self.device, self.vae.dtype).contiguous() / self.scaling_factor
            x = self.vae.decode(z).sample.float()  # (B, 3, H, W) in [-1, 1]
            x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            out.append(x.permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(out)


def load_model(spec: str | os.PathLike = DEFAULT_MODEL, *, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, config: str | os.PathLike | None = None,
               lora: str | os.PathLike | list | tuple = (), embeddings: str | os.PathLike | list | tuple = (),
               vae: str | os.PathLike | None = None,
               vae_dtype: str | torch.dtype | None = None, vae_tiling: bool = False, compile: bool | str = False,
               channels_last: bool = False) -> Model:
    """Load ``spec``: "tiny-random", "tiny-sdxl", "tiny-pix2pix", "toy", "toy-pix2pix" (the toy model with
    an InstructPix2Pix UNet, ``tools/train_toy_pix2pix.py``), a local diffusers Stable Diffusion (1.x, 2.x
    or XL) directory, a single ``.safetensors``/``.ckpt`` checkpoint, or a hub id (default: Stable
    Diffusion 1.5, ``DEFAULT_MODEL``, downloaded into the Hugging Face cache on first use, as
    diffusers does, and read from there afterwards, offline too).

    ``config``: a single file's architecture (a diffusers directory or hub id, or the original
    YAML; inferred when left out). ``vae``: a replacement VAE (directory or file). ``embeddings``:
    textual-inversion files (or one). ``lora``: LoRA files (or one), each ``"FILE"``, ``"FILE=SCALE"`` or
    ``(FILE, SCALE)``, fused into the weights in order. All of them enter the fingerprint, so
    cached inversions of the plain model are not reused.

    ``vae_dtype``: the VAE's dtype when it is not ``dtype`` (e.g. fp32 under a bf16 UNet).
    ``vae_tiling``: frames larger than the VAE's sample size are encoded and decoded in
    overlapping tiles (diffusers' ``enable_tiling``): far less memory, other latents and pixels.
    ``compile`` (True or an inductor mode, "reduce-overhead": CUDA graphs), ``channels_last``: faster
    execution, the same edit within float rounding (:func:`videdit.models.speed.accelerate`; compiling
    costs time on the first frames, reported apart).
    """
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    lora = [lora] if isinstance(lora, (str, os.PathLike)) else lora
    embeddings = [embeddings] if isinstance(embeddings, (str, os.PathLike)) else embeddings
    spec = str(spec)
    if config is not None and not checkpoints.is_single_file(spec):
        raise VideditError(f"--model-config describes a single-file checkpoint; {spec!r} is not a "
                           f".safetensors/.ckpt file (a directory or hub id has its own config)")
    if spec == "tiny-random":
        parts = tiny.build_tiny_random()
        model = Model(name=spec, fingerprint=tiny.TINY_VERSION, **parts)
    elif spec == "tiny-pix2pix":
        model = Model(name=spec, fingerprint=tiny.PIX2PIX_VERSION, **tiny.build_tiny_pix2pix())
    elif spec == "tiny-sdxl":
        parts = tiny.build_tiny_sdxl()
        model = Model(name=spec, fingerprint=tiny.TINY_SDXL_VERSION, zero_empty_negative=True, **parts)
    elif spec == "toy":
        if not (TOY_DIR / "model_index.json").exists():
            raise VideditError(f"the toy model is not in {TOY_DIR}; reinstall videdit, or train it with "
                               f"tools/train_toy.py and pass its directory to --model")
        model = _load_directory(TOY_DIR, name="toy")
    elif spec == "toy-pix2pix":
        if not (TOY_PIX2PIX_DIR / "unet" / "config.json").exists():
            raise VideditError(f"the toy InstructPix2Pix UNet is not in {TOY_PIX2PIX_DIR}; reinstall videdit, or "
                               f"train it with tools/train_toy_pix2pix.py")
        model = toy_pix2pix(TOY_PIX2PIX_DIR)
    elif checkpoints.is_single_file(spec):
        parts = checkpoints.load_single_file(Path(spec), config)
        extra = [f"config:{_fingerprint(Path(config)) if Path(config).is_dir() else config}"] if config else []
        model = Model(name=spec, fingerprint=checkpoints.combine_fingerprint(
            checkpoints.file_fingerprint(Path(spec)), extra), **parts)
    elif spec.lower().endswith(checkpoints.CHECKPOINT_SUFFIXES) and not Path(spec).exists():
        raise VideditError(f"no checkpoint file at {spec!r}")
    elif Path(spec).is_file():
        raise VideditError(f"{spec} is not a model: --model takes a diffusers directory, a hub id, or a "
                           f"single checkpoint file ({', '.join(checkpoints.CHECKPOINT_SUFFIXES)})")
    elif Path(spec).exists():
        model = _load_directory(Path(spec), name=spec)
    elif Path(spec).is_absolute() or spec.startswith(".") or spec.count("/") != 1:
        raise VideditError(f"no model at {spec!r}: give a diffusers directory, a hub id (owner/name), "
                           f"or one of {sorted([*BUILTIN, *TOY_MODELS])}")
    else:
        model = _load_directory(_download(spec), name=spec)
    _apply_extras(model, vae=vae, embeddings=embeddings, lora=lora)
    _place(model, device, dtype)
    if vae_dtype is not None:
        _quiet_to((model.vae,), dtype=resolve_dtype(vae_dtype))
    warn_emulated_half(device, {dtype, model.vae.dtype})
    if vae_tiling:
        model.vae.enable_tiling()
    speed.accelerate(model, compile=compile, channels_last=channels_last)
    return model


def toy_pix2pix(folder: Path) -> Model:
    """The toy model with the InstructPix2Pix UNet in ``folder/unet`` (fp32, on the CPU; its
    weights enter the fingerprint)."""
    model = _load_directory(TOY_DIR, name="toy-pix2pix")
    model.unet = UNet2DConditionModel.from_pretrained(folder / "unet", low_cpu_mem_usage=False).float().eval()
    model.unet.requires_grad_(False)
    model.fingerprint = checkpoints.combine_fingerprint(model.fingerprint, [f"unet:{_fingerprint(folder / 'unet')}"])
    return model


def peek_geometry(spec: str | os.PathLike, dtype: str | torch.dtype | None = None) -> Geometry | None:
    """A diffusers directory's or hub model's :class:`Geometry` from its UNet and VAE configs alone
    (for a hub id: from the Hugging Face cache, or two small downloads), so that an edit over the
    memory budget is refused before gigabytes of weights download or load. None where the configs
    cannot be read so (built-in models and single files load in seconds and are checked then)."""
    spec, dtype = str(spec), resolve_dtype(dtype)
    try:
        if Path(spec).is_dir():
            unet, vae = (Path(spec) / part / "config.json" for part in ("unet", "vae"))
        elif spec in BUILTIN or spec in TOY_MODELS or Path(spec).exists() or spec.count("/") != 1:
            return None
        else:
            from huggingface_hub import snapshot_download

            # the two configs alone (offline: from the cache); one request, no retries, fails fast
            root = Path(snapshot_download(spec, allow_patterns=["unet/config.json", "vae/config.json"]))
            unet, vae = root / "unet" / "config.json", root / "vae" / "config.json"
        return Geometry.of(spec, json.loads(unet.read_text()), json.loads(vae.read_text()), dtype)
    except Exception:   # unreachable, not cached, not a diffusers layout: load_model says why
        return None


def _apply_extras(model: Model, *, vae, embeddings, lora) -> None:
    """Replace the VAE, add embeddings and fuse LoRAs (in fp32, before ``_place`` casts), and
    fold each into the fingerprint (cache keys)."""
    extras = []
    if vae is not None:
        model.vae = checkpoints.load_vae(vae, like=model.vae)
        vae_fp = _fingerprint(Path(vae)) if Path(vae).is_dir() else checkpoints.file_fingerprint(Path(vae))
        extras.append(f"vae:{vae_fp}")
    if embeddings:
        model.tokenizer = copy.deepcopy(model.tokenizer)  # tiny-random's tokenizer is shared (lru_cache)
        if model.tokenizer_2 is not None:                 # tiny-sdxl's two are one object: two copies
            model.tokenizer_2 = copy.deepcopy(model.tokenizer_2)
    for path in embeddings:
        parts = {"tokenizer": model.tokenizer, "text_encoder": model.text_encoder,
                 "tokenizer_2": model.tokenizer_2, "text_encoder_2": model.text_encoder_2}
        model.prompt_words.update(checkpoints.add_embedding(parts, Path(path)))
        extras.append(f"embedding:{checkpoints.file_fingerprint(Path(path))}")
    for spec in lora:
        item = checkpoints.Lora.parse(spec)
        parts = {"unet": model.unet, "text_encoder": model.text_encoder, "text_encoder_2": model.text_encoder_2}
        checkpoints.apply_lora({k: v for k, v in parts.items() if v is not None}, item)
        extras.append(f"lora:{checkpoints.file_fingerprint(item.path)}:{item.scale!r}")
    model.fingerprint = checkpoints.combine_fingerprint(model.fingerprint, extras)


MODEL_FILES = ["*.json", "*.txt", "unet/*.safetensors", "vae/*.safetensors", "text_encoder/*.safetensors",
               "text_encoder_2/*.safetensors"]   # SDXL's second text encoder
MODEL_ALTERNATIVES = ("use --model toy (shipped with videdit, works offline) or a local diffusers directory "
                      "(--model /path/to/stable-diffusion-v1-5)")


def _download(repo_id: str, patterns: list[str] = MODEL_FILES, alternatives: str = MODEL_ALTERNATIVES) -> Path:
    """The hub repo's snapshot in the Hugging Face cache: the files matching ``patterns`` (by
    default the configs and the full-precision safetensors weights of the parts videdit loads),
    not the fp16/EMA variants beside them, fetched on first use; offline (``HF_HUB_OFFLINE=1``,
    or the hub unreachable) the cached copy, else one line naming the offline ``alternatives``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    variants = ["*.fp16.*", "*.bf16.*", "*non_ema*", "*.ema.*"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, ignore_patterns=variants))
    except LocalEntryNotFoundError as e:   # offline, or the hub unreachable, and not in the cache
        why = "HF_HUB_OFFLINE is set" if _hub_offline() else "the hub is unreachable"
        raise VideditError(f"{repo_id!r} is not in the Hugging Face cache and cannot be downloaded ({why}); "
                           f"connect once to download it, or {alternatives}") from e
    except GatedRepoError as e:
        raise VideditError(f"{repo_id!r} is gated on the hub: accept its license there and log in "
                           f"(huggingface-cli login), or {alternatives}") from e
    except RepositoryNotFoundError as e:
        raise VideditError(f"no model {repo_id!r} on the Hugging Face hub; check the id, or {alternatives}") from e
    except Exception as e:  # anything else the hub says
        raise VideditError(f"cannot fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}); {alternatives}") from e


def _hub_offline() -> bool:
    """Whether huggingface_hub was told not to connect (HF_HUB_OFFLINE, as it read it at import or as set now)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _load_directory(path: Path, name: str) -> Model:
    """A ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` directory's parts (SDXL: two
    text encoders, the second with a projection, and ``force_zeros_for_empty_prompt``, True where
    the index leaves it out, as the pipeline's default)."""
    if not (path / "model_index.json").exists():
        raise VideditError(f"{path} is not a diffusers model directory (no model_index.json); "
                           "save one with StableDiffusionPipeline.save_pretrained(path)")
    index = json.loads((path / "model_index.json").read_text())
    sdxl = {}
    if "text_encoder_2" in index:
        if not (path / "text_encoder").is_dir():
            raise VideditError(f"{path} is an SDXL model without its first text encoder (the refiner?): "
                               f"videdit edits with a text-to-image SDXL model, e.g. stable-diffusion-xl-base-1.0")
        try:
            sdxl = {"text_encoder_2": CLIPTextModelWithProjection.from_pretrained(path / "text_encoder_2"),
                    "tokenizer_2": CLIPTokenizer.from_pretrained(path / "tokenizer_2"),
                    "zero_empty_negative": bool(index.get("force_zeros_for_empty_prompt", True))}
        except (OSError, ValueError) as e:
            raise VideditError(f"cannot load the model in {path}: {e}".splitlines()[0]) from e
    try:
        # low_cpu_mem_usage=False: the default asks for `accelerate` and warns without it
        unet = UNet2DConditionModel.from_pretrained(path / "unet", low_cpu_mem_usage=False)
        vae = AutoencoderKL.from_pretrained(path / "vae", low_cpu_mem_usage=False)
        text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
        scheduler_config = dict(DDIMScheduler.load_config(path / "scheduler"))
    except (OSError, ValueError) as e:
        raise VideditError(f"cannot load the model in {path}: {e}".splitlines()[0]) from e
    return Model(name=name, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                 scheduler_config=scheduler_config, fingerprint=_fingerprint(path), **sdxl)


def _fingerprint(path: Path) -> str:
    """Configs' contents plus weight files' sizes and mtimes: cheap, and changes when the
    weights do."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file():
            rel = f.relative_to(path).as_posix()
            if f.suffix in {".json", ".txt"}:
                h.update(rel.encode() + f.read_bytes())
            else:
                st = f.stat()
                h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cpu_has(dtype: torch.dtype) -> bool:
    """Whether this CPU computes in ``dtype`` natively (fp32 always; bf16 with AVX512-BF16 or AMX,
    fp16 with AMX-FP16)."""
    probes = {torch.bfloat16: ("_is_avx512_bf16_supported", "_is_amx_tile_supported"),
              torch.float16: ("_is_amx_fp16_supported",)}.get(dtype)
    return probes is None or any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def warn_emulated_half(device: torch.device, dtypes) -> None:
    """Say so where a model part computes in bf16 or fp16 on a CPU that has no instructions for it:
    emulated, tens of times slower than fp32."""
    import warnings

    names = {torch.bfloat16: "bf16", torch.float16: "fp16"}
    slow = sorted(names[d] for d in dtypes if d in names and device.type == "cpu" and not cpu_has(d))
    if slow:
        warnings.warn(f"{' and '.join(slow)} on this CPU, which has no instructions for it, runs emulated, tens of "
                      f"times slower than fp32 (the toy VAE's 256-px decode in bf16: 56 s against 0.5 s, `python "
                      f"tools/bench.py vae`); use fp32 on a CPU", stacklevel=3)


def _place(model: Model, device: torch.device, dtype: torch.dtype) -> Model:
    """Every part to ``device`` and ``dtype``; an SDXL VAE marked ``force_upcast`` (SDXL base's, which
    overflows in fp16) stays in fp32 under fp16, as ``StableDiffusionXLPipeline`` upcasts it."""
    parts = [p for p in (model.unet, model.vae, model.text_encoder, model.text_encoder_2) if p is not None]
    upcast = dtype == torch.float16 and is_sdxl(model.unet) and getattr(model.vae.config, "force_upcast", False)
    _quiet_to([p for p in parts if not (upcast and p is model.vae)], device=device, dtype=dtype)
    if upcast:
        _quiet_to((model.vae,), device=device, dtype=torch.float32)
    for part in parts:
        part.eval().requires_grad_(False)
    model.device, model.dtype = device, dtype
    set_pixels_per_latent(model.unet, model.vae_scale_factor)
    return model


def _quiet_to(parts, **kw) -> None:
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # .to(dtype) warns about an empty list of fp32 modules
    try:
        for part in parts:
            part.to(**kw)
    finally:
        diffusers_logging.set_verbosity(level)


@contextmanager
def unet_dtype(unet, dtype: torch.dtype):
    """Run ``unet`` in ``dtype`` inside the block (e.g. an fp32 inversion of a bf16 model);
    its own dtype is restored in ``finally``. Casting bf16/fp16 weights to fp32 and back is
    lossless, so the model is unchanged afterwards."""
    old = unet.dtype
    if old == dtype:
        yield unet
        return
    _quiet_to((unet,), dtype=dtype)
    try:
        yield unet
    finally:
        _quiet_to((unet,), dtype=old)
