#!/usr/bin/env python
"""Why cross-frame attention does (or cannot) hold a model's edit together, measured on one clip.

    python tools/cross_frame_probe.py --model tiny-random --clip wolf
    python tools/cross_frame_probe.py --model toy --clip wolf --size 64 --steps 25 --guidance 4

For each ``--scales`` factor s (attn1's query and key weights multiplied by s, so its logits
by s^2; 1 = the model as it is) it prints:

- the self-attention maps' mean entropy as a fraction of log T (1 = uniform), on the clip's
  first frame noised to t = 500, per head and query, averaged over the attn1 layers, and the
  largest attention weight of a query as a multiple of uniform's 1/T;
- the warp error of independent per-frame editing, and of cross-frame (first) and
  (sparse-causal) attention as a ratio to it (the source clip's DIS flow, as
  tools/temporal_table.py);
- how far cross-frame (first) moves the edit (mean absolute difference, 0-255), against how
  far the edit is from the source, and how far the edit moves when every attn1 output is
  zeroed (does self-attention matter to the output at all).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


class EntropyProbe:
    """diffusers' plain attention, recording each map's entropy / log T and its largest weight."""

    def __init__(self):
        self.entropy: list[float] = []
        self.peak: list[float] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = (attn.head_to_batch_dim(x) for x in (attn.to_q(hidden_states), attn.to_k(ctx), attn.to_v(ctx)))
        p = attn.get_attention_scores(q, k, None)                      # (B * heads, T, T)
        self.entropy.append(float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean() / math.log(p.shape[-1])))
        self.peak.append(float(p.amax(-1).mean() * p.shape[-1]))          # x uniform's 1/T
        out = attn.batch_to_head_dim(torch.bmm(p, v))                  # (B, T, C)
        return attn.to_out[1](attn.to_out[0](out))


class ZeroOutput:
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        return torch.zeros_like(hidden_states)


def with_attn1(unet, make):
    """Processors: ``make()`` on every self-attention layer, the others as they are."""
    return {name: (make() if ".attn1." in name else proc) for name, proc in unet.attn_processors.items()}


@torch.no_grad()
def attn1_entropy(model, frame: np.ndarray, prompt: str) -> tuple[float, float]:
    from diffusers import DDIMScheduler

    latents = model.encode_images(frame[None])                       # (1, 4, h, w)
    t = torch.tensor([500])
    alpha = DDIMScheduler.from_config(model.scheduler_config).alphas_cumprod[500]
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0)).to(latents)
    noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
    probes: list[EntropyProbe] = []
    originals = model.unet.attn_processors

    def make():
        probes.append(EntropyProbe())
        return probes[-1]

    model.unet.set_attn_processor(with_attn1(model.unet, make))
    try:
        model.unet(noisy.to(model.dtype), t, encoder_hidden_states=model.encode_text([prompt]))
    finally:
        model.unet.set_attn_processor(originals)
    return float(np.mean([e for p in probes for e in p.entropy])), float(np.mean([m for p in probes for m in p.peak]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--clip", default="wolf")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--scales", type=float, nargs="*", default=[1.0, 4.0])
    a = p.parse_args()

    from videdit import edit_video, io, load_model
    from videdit.metrics.temporal import warp_error
    from videdit.video.flow import compute_flows

    cases = {Path(c["clip"]).stem: c for c in json.loads((DATA / "cases.json").read_text())["cases"]}
    case = cases[a.clip]
    path = DATA / case["clip"]
    read = io.ReadOptions(max_frames=a.frames, size=a.size)
    source, _ = io.read_clip(path, read)
    flows = compute_flows(source)
    print(f"model={a.model} clip={a.clip} frames={a.frames} size={a.size} steps={a.steps} guidance={a.guidance}")
    print(f"{'scale':>6}{'entropy/logT':>14}{'peak x 1/T':>12}{'indep. warp':>13}{'first':>8}{'sparse':>8}"
          f"{'|first-indep|':>15}{'|indep-src|':>13}{'|attn1=0 - indep|':>19}")
    for scale in a.scales:
        model = load_model(a.model)
        with torch.no_grad():
            for name, module in model.unet.named_modules():
                if name.endswith("attn1"):
                    module.to_q.weight.mul_(scale)
                    module.to_k.weight.mul_(scale)
        entropy, peak = attn1_entropy(model, source[0], case["source"])

        def edit(temporal):
            res = edit_video(path, source_prompt=case["source"], target_prompt=case["target"][0], model=model,
                             steps=a.steps, guidance=a.guidance, read=read, window=a.frames, temporal=temporal,
                             use_cache=False)
            return np.stack([cv2.resize(f, source.shape[2:0:-1], interpolation=cv2.INTER_AREA) for f in res.frames])

        indep, first = edit({}), edit({"cross_frame": {"mode": "first"}})
        sparse = edit({"cross_frame": {"mode": "sparse_causal"}})
        originals = model.unet.attn_processors
        model.unet.set_attn_processor(with_attn1(model.unet, ZeroOutput))
        try:
            ablated = edit({})
        finally:
            model.unet.set_attn_processor(originals)
        e = warp_error(indep, flows)
        diff = lambda x, y: float(np.abs(x.astype(np.float32) - y.astype(np.float32)).mean())  # noqa: E731
        print(f"{scale:>6g}{entropy:>14.3f}{peak:>12.1f}{e:>13.2f}{warp_error(first, flows) / e:>8.2f}"
              f"{warp_error(sparse, flows) / e:>8.2f}{diff(first, indep):>15.1f}{diff(indep, source):>13.1f}"
              f"{diff(ablated, indep):>19.1f}")


if __name__ == "__main__":
    main()
