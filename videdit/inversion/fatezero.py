"""FateZero's inversion: DDIM inversion that stores the attention maps for attention fusion
(Qi et al., "FateZero: Fusing Attentions for Zero-shot Text-based Video Editing", ICCV 2023, Sec. 4.1).

Follows github.com/ChenyangQiQi/FateZero, ``video_diffusion/pipelines/p2p_ddim_spatial_temporal.py``
(``prepare_latents_ddim_inverted(store_attention=True)``, ``ddim_clean2noisy_loop``) and
``video_diffusion/prompt_attention/attention_store.py`` (``AttentionStore``): DDIM inversion under
the source prompt's conditional embedding alone (no guidance: ``LOW_RESOURCE = True``), through
FateZero's UNet, whose self-attention takes its keys and values from the window's middle frame
on layers of at least ``min_channels`` channels (``SparseCausalAttention_index: ['mid']``,
``least_sc_channel: 640``; the record says which, and the ``fatezero`` editor runs the same),
recording at every step the conditional self- and cross-attention of the layers of at most
``max_tokens`` query tokens (``attn.shape[-2] <= 32 ** 2``: SD's 32x32, 16x16 and 8x8 layers at
512 px). The ``fatezero`` editor fuses them into the edit; no source branch runs then.

The record's extras (:mod:`videdit.attention.stored`), on the CPU in the UNet's dtype (the
reference keeps its 32x32 maps on the CPU too):

* ``attn.<layer>``: the maps (N, F, heads, Tq, Tk) of a cross-attention layer, and of a
  self-attention layer where they are smaller than its queries and keys;
* ``attn_q.<layer>``, ``attn_k.<layer>``: the queries and keys (N, F, heads, T, d) of the other
  self-attention layers, from which the edit computes the same maps, softmax(q k^T scale);
* ``anchor.<layer>``: (F, m) the frames each frame's self-attention attended to on an anchored
  layer (frame axis 0), so that the edit runs the same UNet as the inversion did.

Memory: SD 1.5 at 512x512 stores 13.2M numbers per frame and step (self-attention: queries and
keys of the five 32x32 layers 6.55M, maps of the five 16x16 layers 2.62M and of the 8x8 one 0.03M;
cross-attention maps 3.98M), 26 MB in fp16, 1.3 GB per frame over 50 steps (10.6 GB for
FateZero's 8 frames). The reference stores the 32x32 self-attention maps themselves, 41.9M
numbers: 48.6M per frame and step, 4.9 GB per frame over 50 steps (see :func:`stored_numbers`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videdit.attention import AttentionModule, attention_processors, compose, layer_grids
from videdit.attention.stored import ANCHOR, AttentionRecorder
from videdit.core.ddim import ddim_inverse_step
from videdit.core.loop import CallInfo, predict_noise
from videdit.errors import VideditError
from videdit.inversion.record import Inversion
from videdit.inversion.registry import InversionInputs, register_inversion
from videdit.progress import progress_bar
from videdit.video.cross_frame import anchored_layers, fixed_anchors, layer_channels

NAME = "fatezero"
ANCHORS = ("mid", "sparse_causal", "none")


@dataclass(frozen=True)
class FateZeroInversionConfig:
    # mid: the window's middle frame (SparseCausalAttention_index ['mid'], the zero-shot configs) | sparse_causal:
    # the previous and the first frame ([-1, 'first'], its default, for Tune-A-Video-tuned checkpoints) | none
    anchor: str = "mid"
    min_channels: int = 640       # ... on self-attention layers of at least this many channels (least_sc_channel)
    max_tokens: int = 32 ** 2     # store the attention of layers of at most this many query tokens (32x32)

    def __post_init__(self):
        if self.anchor not in ANCHORS:
            raise VideditError(f"{NAME} inversion anchor must be one of {list(ANCHORS)}, got {self.anchor!r}")
        for name in ("min_channels", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise VideditError(f"{NAME} inversion {name} must be an int >= 0, got {value!r}")


def stored_layers(unet, latent: tuple[int, int], max_tokens: int) -> dict[str, str]:
    """{processor name: what is stored} for the layers of at most ``max_tokens`` query tokens at
    ``latent`` (h, w): ``"maps"`` for cross-attention and for self-attention where the maps
    (heads x T x T) are smaller than the queries and keys (2 x T x channels), else ``"qk"``."""
    grids = {n: g for n, g in layer_grids(unet, latent).items() if g[0] * g[1] <= max_tokens}
    selfs = [n for n in grids if n.endswith("attn1.processor")]
    channels = layer_channels(unet, selfs)
    modules = dict(unet.named_modules())
    out = {}
    for name, (h, w) in grids.items():
        if name.endswith("attn2.processor"):
            out[name] = "maps"
        else:
            heads = modules[name.removesuffix(".processor")].heads
            out[name] = "maps" if heads * h * w <= 2 * channels[name] else "qk"
    return out


def stored_numbers(unet, latent: tuple[int, int], max_tokens: int, text_tokens: int = 77) -> int:
    """Numbers stored per frame and step (:func:`stored_layers`), for the memory figure."""
    modules = dict(unet.named_modules())
    grids = layer_grids(unet, latent)
    total = 0
    for name, kind in stored_layers(unet, latent, max_tokens).items():
        attn = modules[name.removesuffix(".processor")]
        t = grids[name][0] * grids[name][1]
        if name.endswith("attn2.processor"):
            total += attn.heads * t * text_tokens
        else:
            total += attn.heads * t * t if kind == "maps" else 2 * t * attn.to_q.in_features
    return total


@register_inversion(NAME, FateZeroInversionConfig, independent_frames=lambda c: c.anchor == "none",
                    stores=("attention",),
                    reference="Qi et al., ICCV 2023; github.com/ChenyangQiQi/FateZero "
                              "(p2p_ddim_spatial_temporal.py prepare_latents_ddim_inverted, attention_store.py)")
@torch.no_grad()
def fatezero_inversion(inp: InversionInputs, config: FateZeroInversionConfig) -> Inversion:
    """DDIM inversion through FateZero's middle-frame attention, storing the attention maps for fusion."""
    s, unet = inp.schedule, inp.unet
    x = inp.latents.float()[None]                                  # (1, F, C, h, w)
    n_frames, latent = x.shape[1], tuple(x.shape[-2:])
    info = CallInfo(inverting=True)
    modules: list[AttentionModule] = []
    anchors: dict[str, torch.Tensor] = {}
    if config.anchor != "none" and n_frames > 1:
        frames = torch.arange(n_frames)
        where = (torch.full((n_frames, 1), (n_frames - 1) // 2) if config.anchor == "mid"
                 else torch.stack([(frames - 1).clamp(min=0), torch.zeros_like(frames)], 1))   # (F, m)
        layers = anchored_layers(unet, ("*attn1.processor",), config.min_channels)
        if layers:
            anchors = {ANCHOR + n: where.clone() for n in layers}   # one tensor each: the cache saves them apart
            module, info.lead_frames = fixed_anchors(layers, where, inverting=True, what=f"{NAME} inversion")
            modules.append(module)
    kept = stored_layers(unet, latent, config.max_tokens)
    if not kept:
        raise VideditError(f"{NAME} inversion: no attention layer has max_tokens={config.max_tokens} query tokens or "
                           f"fewer at {latent[0]}x{latent[1]} latents; raise max_tokens")
    recorder = AttentionRecorder(kept, len(s), n_frames)
    modules.append(recorder)   # after the anchor: it records the keys the layer attends to
    path = [x[0]]
    with attention_processors(unet, compose(unet, modules, info)):
        for i in progress_bar(reversed(range(len(s))), total=len(s), desc="invert", disable=not inp.progress, leave=False):
            info.step = i
            t = int(s.timesteps[i])
            out = predict_noise(unet, x, t, inp.cond, None, (1.0,), batch_size=inp.batch_size, info=info)
            x = ddim_inverse_step(x, out, float(s.alphas_prev[i]), float(s.alphas[i]), inp.prediction_type)
            path.append(x[0])
    stored = recorder.finished()
    return Inversion(method=NAME, trajectory=torch.stack(path[::-1]), extras={**stored, **anchors},
                     unet_evals=len(s), frame_axes={k: 1 for k in stored})
