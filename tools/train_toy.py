#!/usr/bin/env python
"""Train the toy Stable-Diffusion-architecture model on the synthetic shapes world.

Phases, each resumable: (1) a small ``AutoencoderKL`` (64x64 RGB -> 16x16x4
latents), then frozen; (2) a ``CLIPTextModel`` trained from scratch jointly
with a ``UNet2DConditionModel`` (epsilon prediction, SD's scaled-linear
1000-step schedule, classifier-free-guidance caption dropout, min-SNR loss
weighting, Hang et al. 2023, offset noise so the model can move the
global colour away from what the non-zero terminal SNR leaks, and a
cross-attention grounding loss that puts each object word's 16x16/8x8
attention inside the object's ground-truth mask, TokenCompose-style).
The VAE loss weights pixels on and near objects up (they are ~10% of the image).

Data come from the world generator, seeded per step, so a resumed run sees
exactly the batches an uninterrupted one would. Checkpoints are written
atomically every ``--ckpt-every`` steps and on SIGTERM/SIGINT; ``--resume``
continues from ``OUT/ckpt_latest.pt``; on a machine without that checkpoint,
``--init-from videdit/toy/model`` continues from the committed export. The EMA weights are exported as a
standard diffusers StableDiffusion directory (``--export``) every
``--export-minutes`` and at the end.

    nohup nice -n 5 python tools/train_toy.py --out runs/toy > runs/toy/train.log 2>&1 &
    nohup nice -n 5 python tools/train_toy.py --out runs/toy --resume >> runs/toy/train.log 2>&1 &
    kill -TERM $(cat runs/toy/train.pid)   # checkpoints, exports and exits
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from videdit.toy.architecture import (build_scheduler, build_text_encoder, build_tokenizer, build_unet, build_vae,
                                     save_tokenizer)
from videdit.toy.world import WorldConfig, sample_scene

_STOP = {"flag": False}


def _on_signal(signum, frame):  # noqa: ARG001
    _STOP["flag"] = True
    print(f"signal {signum}: will checkpoint and stop after this step", flush=True)


# ------------------------------------------------------------------ models


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------ data


def batch(seed: int, phase: int, step: int, n: int, world: WorldConfig, with_coverage: bool = False):
    """Images (n, 3, H, W) in [-1, 1] and captions for one step; a pure function of its arguments.

    With ``with_coverage`` also the (n, 1, H, W) union of object coverage.
    """
    rng = np.random.default_rng([seed, phase, step])
    scenes = [sample_scene(rng, world) for _ in range(n)]
    x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if with_coverage:
        cov = torch.from_numpy(np.stack([s.coverage.sum(0).clip(0, 1) for s in scenes]))[:, None].float()
        return x, [s.caption for s in scenes], cov
    return x, [s.caption for s in scenes], scenes


def grounding_targets(scenes, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token, the visible coverage of the object it names: (B, n_tokens, H, W) and a (B, n_tokens) flag.

    Every world word is one token and the start token comes first, so word i is token i + 1;
    an object's colour word and shape word both point at its mask.
    """
    b, (h, w) = len(scenes), scenes[0].image.shape[:2]
    target = torch.zeros(b, n_tokens, h, w)
    has = torch.zeros(b, n_tokens, dtype=torch.bool)
    for i, s in enumerate(scenes):
        words = s.caption.split()
        for k, o in enumerate(s.objects):
            j = next(j for j in range(len(words) - 1) if words[j] == o.colour and words[j + 1] == o.shape)
            for tok_pos in (j + 1, j + 2):
                if tok_pos < n_tokens:
                    target[i, tok_pos] = torch.from_numpy(s.coverage[k])
                    has[i, tok_pos] = True
    return target, has


class GroundingProcessor:
    """Cross-attention computed as diffusers' ``AttnProcessor`` does, plus a token grounding loss.

    For tokens with a target mask m (pooled to the layer's resolution), the loss is
    1 - sum_q A[q, j] m[q] / sum_q A[q, j] (the token loss of TokenCompose, Wang et al. 2024):
    the fraction of the token's attention that falls outside its object; plus ``fill`` times
    sum_q m[q] (1 - A[q, j] / max_q A[q, j]) / sum_q m[q], which asks the map to be flat over the
    whole object rather than peaked at its centre (so a thresholded map covers the object).
    """

    def __init__(self, losses: list, fill: float = 0.0):
        self.losses = losses
        self.fill = fill
        self.target = None  # (B, K, H, W) set per step
        self.has = None  # (B, K)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        b, q_len, _ = hidden_states.shape
        context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B*heads, Q, d)
        key = attn.head_to_batch_dim(attn.to_k(context))  # (B*heads, K, d)
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B*heads, Q, K)
        if self.target is not None and self.has.any():
            side = int(round(math.sqrt(q_len)))
            m = F.adaptive_avg_pool2d(self.target, side).flatten(2)  # (B, K, Q)
            a = probs.view(b, attn.heads, q_len, -1).mean(1).transpose(1, 2)  # (B, K, Q)
            inside = (a * m).sum(-1) / a.sum(-1).clamp_min(1e-8)  # (B, K)
            loss = 1.0 - inside
            if self.fill > 0:
                flat = a / a.amax(-1, keepdim=True).clamp_min(1e-8)  # (B, K, Q), peak = 1
                loss = loss + self.fill * (m * (1.0 - flat)).sum(-1) / m.sum(-1).clamp_min(1e-6)
            self.losses.append(loss[self.has].mean())
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def encode_text(tok, text_encoder, captions, device):
    """Exactly what StableDiffusionPipeline.encode_prompt does (no clip skip, no attention mask)."""
    ids = tok(
        captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)
    return text_encoder(ids)[0]


# ------------------------------------------------------------------ checkpoints


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p.detach(), 1.0 - decay)


def export_pipeline(args, tok, vae, text_encoder, unet, info: dict) -> None:
    """Write a diffusers StableDiffusion directory to ``args.export`` (build aside, then swap)."""
    from diffusers import StableDiffusionPipeline

    dst = Path(args.export)
    tmp = dst.with_name(dst.name + ".tmp")
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae).to("cpu", torch.float32),
        text_encoder=copy.deepcopy(text_encoder).to("cpu", torch.float32),
        tokenizer=tok,
        unet=copy.deepcopy(unet).to("cpu", torch.float32),
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # fp16 files keep the directory small; diffusers loads them back as float32.
    # The text encoder stays float32 (tiny, and transformers would keep it fp16).
    pipe.unet.to(torch.float16)
    pipe.vae.to(torch.float16)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    save_tokenizer(tok, tmp / "tokenizer")
    (tmp / "training_state.json").write_text(json.dumps(info, indent=2))
    card = dst / "README.md"
    if card.exists():
        shutil.copy(card, tmp / "README.md")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------ training


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/toy")
    p.add_argument("--export", default="videdit/toy/model")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init-from", help="start from an exported model directory (e.g. videdit/toy/model) "
                   "when there is no checkpoint to resume: skips the VAE phase, keeps the step count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--two-object-prob", type=float, default=WorldConfig.two_object_prob,
                   help="share of two-object scenes")
    p.add_argument(
        "--overlap-prob", type=float, default=WorldConfig.overlap_prob,
        help="of two-object scenes, the share where the second object partly hides the first (occlusion)",
    )
    p.add_argument(
        "--threads", default="auto",
        help="torch CPU threads: a number, or 'auto' = all cores while the machine is otherwise idle, "
        "1 while other jobs load it (oversubscribed OpenMP threads stall each other)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--vae-channels", type=int, nargs=3, default=[32, 64, 64])
    p.add_argument("--vae-steps", type=int, default=2000)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-object-weight", type=float, default=10.0, help="extra loss weight on and near objects")
    p.add_argument("--vae-kl", type=float, default=1e-4, help="KL weight per latent element")
    p.add_argument("--text-dim", type=int, default=64)
    p.add_argument("--text-layers", type=int, default=2)
    p.add_argument("--unet-channels", type=int, nargs=3, default=[64, 128, 128])
    p.add_argument("--unet-layers", type=int, default=1)
    p.add_argument("--steps", type=int, default=12000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--text-lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--cfg-drop", type=float, default=0.1)
    p.add_argument("--offset-noise", type=float, default=0.1)
    p.add_argument("--min-snr", type=float, default=5.0)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--attn-fill", type=float, default=1.0, help="weight of the flat-over-the-object term in the grounding loss")
    p.add_argument(
        "--attn-loss", type=float, default=0.01,
        help="weight of the cross-attention grounding loss (object words attend inside their masks); 0 = off",
    )
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--export-minutes", type=float, default=15.0)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop (checkpoint+export) after this long; 0 = no limit")
    p.add_argument("--no-export", action="store_true")
    args = p.parse_args(argv)

    max_threads = min(2, os.cpu_count() or 1)

    def pick_threads() -> int:
        if args.threads != "auto":
            return int(args.threads)
        others = os.getloadavg()[0] - torch.get_num_threads()  # 1-min load not caused by us (roughly)
        return max_threads if others < 0.7 else 1

    torch.set_num_threads(max_threads if args.threads == "auto" else int(args.threads))
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.pid").write_text(f"{os.getpid()}\n")  # for `kill -TERM $(cat OUT/train.pid)`
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    torch.manual_seed(args.seed)
    world = WorldConfig(size=args.size, two_object_prob=args.two_object_prob, overlap_prob=args.overlap_prob)

    tok = build_tokenizer(args.max_length)
    vae = build_vae(args).to(device)
    text_encoder = build_text_encoder(args, tok).to(device)
    unet = build_unet(args).to(device)
    sched = build_scheduler()
    print(
        f"device={device} params: vae={n_params(vae)/1e6:.2f}M text={n_params(text_encoder)/1e6:.3f}M "
        f"unet={n_params(unet)/1e6:.2f}M vocab={len(tok)}",
        flush=True,
    )

    state = {"phase": "vae", "vae_step": 0, "step": 0, "wall": 0.0, "scaling_factor": None}
    vae_opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    ckpt_path = out / "ckpt_latest.pt"
    ckpt = None
    if args.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        state = ckpt["state"]
        vae.load_state_dict(ckpt["vae"])
        if "vae_opt" in ckpt:
            vae_opt.load_state_dict(ckpt["vae_opt"])
        print(f"resumed from {ckpt_path}: {state}", flush=True)
    elif args.resume:
        print(f"--resume: no {ckpt_path}, starting fresh", flush=True)
    if ckpt is None and args.init_from:
        # Continue from an exported model (a checkpoint in runs/ does not travel between machines):
        # its VAE and scale as they are, its EMA text encoder and UNet as the starting weights; the
        # optimiser starts afresh (the warm-up covers it).
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        init = Path(args.init_from)
        if tok.get_vocab() != CLIPTokenizer.from_pretrained(init / "tokenizer").get_vocab():
            raise SystemExit(f"{init}/tokenizer numbers its tokens differently from build_tokenizer(); its text "
                             f"encoder's embeddings would not fit (exports before the canonical numbering)")
        vae.load_state_dict(AutoencoderKL.from_pretrained(init / "vae", low_cpu_mem_usage=False).state_dict())
        text_encoder.load_state_dict(CLIPTextModel.from_pretrained(init / "text_encoder").state_dict())
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(init / "unet", low_cpu_mem_usage=False).state_dict())
        prev = json.loads((init / "training_state.json").read_text())
        state = {"phase": "unet", "vae_step": prev["vae_steps"], "step": prev["step"], "wall": 60 * prev["wall_minutes"],
                 "scaling_factor": AutoencoderKL.load_config(init / "vae")["scaling_factor"]}
        print(f"initialised from {init} at step {state['step']}", flush=True)
    t_start = time.time() - state["wall"]
    deadline = time.time() + 60 * args.max_minutes if args.max_minutes > 0 else float("inf")

    def wall() -> float:
        return time.time() - t_start

    # ---------------- phase 1: VAE
    if state["phase"] == "vae":
        vae.train()
        t0, s0 = time.time(), state["vae_step"]
        while state["vae_step"] < args.vae_steps and not _STOP["flag"] and time.time() < deadline:
            i = state["vae_step"]
            lr = args.vae_lr * min(1.0, (i + 1) / 100) * (0.5 * (1 + math.cos(math.pi * i / args.vae_steps)) * 0.9 + 0.1)
            for g in vae_opt.param_groups:
                g["lr"] = lr
            x, _, cov = batch(args.seed, 1, i, args.vae_batch, world, with_coverage=True)
            x, cov = x.to(device), cov.to(device)
            post = vae.encode(x).latent_dist
            z = post.sample(generator=torch.Generator(device).manual_seed(args.seed * 1_000_003 + i))
            rec = vae.decode(z).sample
            kl = post.kl().mean() / z[0].numel()
            # objects are ~10% of the pixels but all that matters for colour and shape: weight them up
            # (and their surroundings, so edges stay sharp)
            near = F.max_pool2d(cov, 5, stride=1, padding=2)
            w = 1.0 + args.vae_object_weight * near
            err = rec - x
            rec_loss = ((err**2 + err.abs()) * w).mean() / w.mean()
            loss = rec_loss + args.vae_kl * kl
            vae_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            vae_opt.step()
            state["vae_step"] += 1
            if state["vae_step"] % args.log_every == 0:
                sps = (state["vae_step"] - s0) / (time.time() - t0)
                print(
                    f"vae step {state['vae_step']} loss {loss.item():.4f} rec {rec_loss.item():.4f} "
                    f"kl {kl.item():.3f} lr {lr:.2e} {sps:.2f} steps/s wall {wall()/60:.1f}m",
                    flush=True,
                )
            if state["vae_step"] % args.ckpt_every == 0:
                state["wall"] = wall()
                atomic_save({"state": state, "vae": vae.state_dict(), "vae_opt": vae_opt.state_dict(), "args": vars(args)}, ckpt_path)
        if state["vae_step"] < args.vae_steps:
            state["wall"] = wall()
            atomic_save({"state": state, "vae": vae.state_dict(), "vae_opt": vae_opt.state_dict(), "args": vars(args)}, ckpt_path)
            print(f"stopped in VAE phase at step {state['vae_step']}", flush=True)
            return 0
        # latent scale: 1 / std of posterior samples on fresh world images
        vae.eval()
        with torch.no_grad():
            zs, errs = [], []
            for j in range(8):
                x, _, _ = batch(args.seed, 3, j, 64, world)
                x = x.to(device)
                z = vae.encode(x).latent_dist.sample()
                zs.append(z)
                errs.append((vae.decode(z).sample.clamp(-1, 1) - x).abs().mean().item() * 127.5)
            zcat = torch.cat(zs)
            sf = 1.0 / zcat.std().item()
        state["scaling_factor"] = sf
        state["vae_rec_mae_255"] = float(np.mean(errs))
        print(
            f"vae done: latent mean {zcat.mean().item():.3f} std {zcat.std().item():.3f} "
            f"scaling_factor {sf:.4f} reconstruction MAE {np.mean(errs):.2f}/255",
            flush=True,
        )
        state["phase"] = "unet"
        state["wall"] = wall()
        atomic_save({"state": state, "vae": vae.state_dict(), "args": vars(args)}, ckpt_path)
        ckpt = None

    # ---------------- phase 2: text encoder + UNet
    vae.register_to_config(scaling_factor=state["scaling_factor"])
    vae.eval().requires_grad_(False)
    sf = state["scaling_factor"]
    opt = torch.optim.AdamW(
        [
            {"params": unet.parameters(), "lr": args.lr, "base_lr": args.lr},
            {"params": text_encoder.parameters(), "lr": args.text_lr, "base_lr": args.text_lr},
        ],
        weight_decay=0.01,
    )
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    if ckpt is not None and "unet" in ckpt:
        unet.load_state_dict(ckpt["unet"])
        text_encoder.load_state_dict(ckpt["text_encoder"])
        ema_unet.load_state_dict(ckpt["ema_unet"])
        ema_text.load_state_dict(ckpt["ema_text"])
        opt.load_state_dict(ckpt["opt"])
    ema_unet.requires_grad_(False)
    ema_text.requires_grad_(False)
    ckpt = None
    alphas_cumprod = sched.alphas_cumprod.to(device)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    loss_weight = torch.clamp(snr, max=args.min_snr) / snr if args.min_snr > 0 else torch.ones_like(snr)

    def save():
        state["wall"] = wall()
        atomic_save(
            {
                "state": state,
                "vae": vae.state_dict(),
                "unet": unet.state_dict(),
                "text_encoder": text_encoder.state_dict(),
                "ema_unet": ema_unet.state_dict(),
                "ema_text": ema_text.state_dict(),
                "opt": opt.state_dict(),
                "args": vars(args),
            },
            ckpt_path,
        )

    def export():
        if args.no_export:
            return
        info = {
            "step": state["step"],
            "vae_steps": state["vae_step"],
            "wall_minutes": round(wall() / 60, 1),
            "batch": args.batch,
            "device": str(device),
            "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, up to {max_threads} torch threads",
            "args": vars(args),
        }
        export_pipeline(args, tok, vae, ema_text, ema_unet, info)
        print(f"exported EMA weights at step {state['step']} to {args.export}", flush=True)

    attn_losses: list = []
    running_attn: list = []
    grounding = GroundingProcessor(attn_losses, fill=args.attn_fill)
    if args.attn_loss > 0:  # supervise every cross-attention layer at 16x16 and 8x8
        res = args.size // 4
        unet.set_attn_processor(
            {
                name: grounding if ".attn2." in name and not name.startswith("mid_block") else proc
                for name, proc in unet.attn_processors.items()
            }
        )
        print(f"grounding loss (weight {args.attn_loss}, fill {args.attn_fill}) on attn2 layers at {res}x{res} and {res // 2}x{res // 2}", flush=True)
    unet.train()
    text_encoder.train()
    last_export = time.time()
    t0, s0 = time.time(), state["step"]
    running = []
    while state["step"] < args.steps and not _STOP["flag"] and time.time() < deadline:
        i = state["step"]
        warm = min(1.0, (i + 1) / args.warmup)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * warm
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + i)
        x, captions, scenes = batch(args.seed, 2, i, args.batch, world)
        drop = torch.rand(len(captions), generator=gen) < args.cfg_drop
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        if args.attn_loss > 0:
            target, has = grounding_targets(scenes, tok.model_max_length)
            has &= ~drop[:, None]  # the empty prompt names nothing
            grounding.target, grounding.has = target.to(device), has.to(device)
        with torch.no_grad():
            x = x.to(device)
            dist = vae.encode(x).latent_dist
            eps_z = torch.randn(dist.mean.shape, generator=gen).to(device)
            z0 = (dist.mean + dist.std * eps_z) * sf
        noise = torch.randn(z0.shape, generator=gen).to(device)
        if args.offset_noise > 0:
            noise = noise + args.offset_noise * torch.randn(z0.shape[0], z0.shape[1], 1, 1, generator=gen).to(device)
        t = torch.randint(0, sched.config.num_train_timesteps, (z0.shape[0],), generator=gen).to(device)
        zt = sched.add_noise(z0, noise, t)
        cond = encode_text(tok, text_encoder, captions, device)
        attn_losses.clear()
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        per = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))  # (B,)
        loss = (per * loss_weight[t]).mean()
        if attn_losses:
            attn_loss = torch.stack(attn_losses).mean()
            loss = loss + args.attn_loss * attn_loss
            running_attn.append(attn_loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
        opt.step()
        state["step"] += 1
        decay = min(args.ema, (1 + state["step"]) / (10 + state["step"]))
        ema_update(ema_unet, unet, decay)
        ema_update(ema_text, text_encoder, decay)
        running.append(per.mean().item())
        if state["step"] % args.log_every == 0:
            if torch.get_num_threads() != (n_threads := pick_threads()):
                torch.set_num_threads(n_threads)
                print(f"load {os.getloadavg()[0]:.2f}: now {n_threads} threads", flush=True)
            sps = (state["step"] - s0) / (time.time() - t0)
            attn_msg = f" attn {np.mean(running_attn):.3f}" if running_attn else ""
            running_attn.clear()
            print(
                f"step {state['step']} loss {np.mean(running):.4f} (weighted {loss.item():.4f}){attn_msg} "
                f"lr {opt.param_groups[0]['lr']:.2e}/{opt.param_groups[1]['lr']:.2e} "
                f"{sps:.3f} steps/s wall {wall()/60:.1f}m",
                flush=True,
            )
            running = []
        if state["step"] % args.ckpt_every == 0:
            save()
        if time.time() - last_export > 60 * args.export_minutes:
            save()
            export()
            last_export = time.time()
    save()
    print(f"checkpoint at step {state['step']} -> {ckpt_path}", flush=True)
    export()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
