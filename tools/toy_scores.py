#!/usr/bin/env python
"""Score the toy text-to-image model (a diffusers directory or a training checkpoint).

Generation: N single-object world prompts (and N/2 two-object prompts) are
sampled with DDIM (Song et al. 2021) and classifier-free guidance (Ho &
Salimans 2022); the images are scored for object colour, shape and background
with ``videdit.toy.scores``.

Localisation: for N world scenes with ground-truth masks, the clean latents
are noised to a few timesteps and the UNet is run on the caption while an
attention processor records the cross-attention (attn2) probabilities at the
16x16 layers. The map of the object's shape word (and of its colour word),
averaged over heads, layers and timesteps, is upsampled, normalised by its
maximum, thresholded at 0.5 and compared with the mask (IoU). The same is
done during generation against the detected object.

    python tools/toy_scores.py videdit/toy/model
    python tools/toy_scores.py runs/toy/ckpt_latest.pt --n 64 --json runs/toy/scores.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from videdit.toy.scores import detect_objects, mask_iou, score_image, score_multi
from videdit.toy.world import WorldConfig, sample_scene


class CrossAttentionRecorder:
    """Attention processor that computes attention like diffusers' ``AttnProcessor`` and keeps
    the cross-attention probabilities (B, Q, K), averaged over heads, when Q == ``n_queries``."""

    def __init__(self, store: list, n_queries: int):
        self.store = store
        self.n_queries = n_queries

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        is_cross = encoder_hidden_states is not None
        b, q_len, _ = hidden_states.shape
        context = encoder_hidden_states if is_cross else hidden_states
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B*heads, Q, d)
        key = attn.head_to_batch_dim(attn.to_k(context))  # (B*heads, K, d)
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B*heads, Q, K)
        if is_cross and q_len == self.n_queries:
            self.store.append(probs.view(b, attn.heads, q_len, -1).mean(1).detach())  # (B, Q, K)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


@contextlib.contextmanager
def recording_cross_attention(unet, store: list, n_queries: int):
    """Install the recorder on every ``attn2`` layer; restore the original processors on exit."""
    originals = dict(unet.attn_processors)
    recorder = CrossAttentionRecorder(store, n_queries)
    unet.set_attn_processor({name: (recorder if ".attn2." in name else proc) for name, proc in originals.items()})
    try:
        yield store
    finally:
        unet.set_attn_processor(originals)


def load(path: str, device: torch.device):
    """(tokenizer, text_encoder, vae, unet, scheduler) from a diffusers directory or a train_toy checkpoint."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    p = Path(path)
    if p.is_dir():
        tok = CLIPTokenizer.from_pretrained(p / "tokenizer")
        te = CLIPTextModel.from_pretrained(p / "text_encoder")
        vae = AutoencoderKL.from_pretrained(p / "vae")
        unet = UNet2DConditionModel.from_pretrained(p / "unet")
        sched = DDIMScheduler.from_pretrained(p / "scheduler")
    else:
        from videdit.toy import architecture

        ck = torch.load(p, map_location="cpu", weights_only=False)
        a = argparse.Namespace(**ck["args"])
        tok = architecture.build_tokenizer(a.max_length)
        te, vae = architecture.build_text_encoder(a, tok), architecture.build_vae(a)
        unet, sched = architecture.build_unet(a), architecture.build_scheduler()
        vae.load_state_dict(ck["vae"])
        vae.register_to_config(scaling_factor=ck["state"]["scaling_factor"])
        if "ema_unet" not in ck:
            raise SystemExit(f"{p} is still in the VAE phase; no UNet to score yet")
        unet.load_state_dict(ck["ema_unet"])
        te.load_state_dict(ck["ema_text"])
        print(f"checkpoint step {ck['state']['step']}, wall {ck['state']['wall'] / 60:.1f} min", flush=True)
    for m in (te, vae, unet):
        m.to(device, torch.float32).eval().requires_grad_(False)
    return tok, te, vae, unet, sched


def encode(tok, te, prompts, device):
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    return te(ids.input_ids.to(device))[0]


def word_index(tok, caption: str, word: str, occurrence: int = 0) -> int:
    """Token position of ``word`` in the encoded caption (after the start token)."""
    toks = tok.tokenize(caption)
    target = tok.tokenize(word)
    if len(target) != 1:
        raise ValueError(f"{word!r} is not a single token")
    hits = [i for i, t in enumerate(toks) if t == target[0]]
    return hits[occurrence] + 1


def attention_map(store: list, b: int, token: int, res: int) -> torch.Tensor:
    """Mean over recorded layers/steps of the map for sample ``b`` and ``token``, (res, res)."""
    maps = torch.stack([a[b, :, token] for a in store])  # (L, Q)
    return maps.mean(0).view(res, res)


def map_iou(m: torch.Tensor, mask: np.ndarray, thresh: float = 0.5) -> float:
    h, w = mask.shape
    up = F.interpolate(m[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    up = up / up.max().clamp_min(1e-12)
    return mask_iou((up >= thresh).cpu().numpy(), mask)


@torch.no_grad()
def ddim_sample(unet, sched, cond, uncond, guidance: float, steps: int, generator, latent_shape, on_step=None):
    """DDIM with classifier-free guidance: eps = eps_u + w (eps_c - eps_u)."""
    sched.set_timesteps(steps)
    z = torch.randn(latent_shape, generator=generator).to(cond.device) * sched.init_noise_sigma
    for t in sched.timesteps:
        zz = torch.cat([z, z])  # (2B, C, h, w): uncond, cond
        eps_u, eps_c = unet(zz, t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        if on_step is not None:
            on_step()
        z = sched.step(eps_u + guidance * (eps_c - eps_u), t, z).prev_sample
    return z


def to_uint8(vae, z) -> np.ndarray:
    x = vae.decode(z / vae.config.scaling_factor).sample
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="videdit/toy/model")
    ap.add_argument("--n", type=int, default=48, help="single-object prompts (and scenes for localisation)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, nargs="+", default=[4.0])
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--timesteps", type=int, nargs="+", default=[200, 400, 600])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the scores here")
    ap.add_argument("--grid", default=None, help="write a PNG grid of the generations here")
    ap.add_argument("--card", action="store_true", help="write MODEL/README.md (model card) with these scores")
    ap.add_argument("--edit-scenes", type=int, default=16,
                    help="world scenes edited after DDIM inversion (prompt_to_prompt, 25 steps, guidance 4): what a "
                    "toy model is for; 0 skips it")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t_start = time.time()
    tok, te, vae, unet, sched = load(args.model, device)
    size = vae.config.sample_size
    res = unet.config.sample_size  # latent side; the 16x16 attention layers have res*res queries
    world = WorldConfig(size=size)
    results: dict = {"model": args.model}

    # ---- localisation on world scenes (ground-truth masks)
    rng = np.random.default_rng(args.seed)
    scenes = [sample_scene(rng, world) for _ in range(args.n)]
    x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float().to(device) / 127.5 - 1
    z0 = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    cond = encode(tok, te, [s.caption for s in scenes], device)
    store: list = []
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad(), recording_cross_attention(unet, store, res * res):
        for t in args.timesteps:
            noise = torch.randn(z0.shape, generator=gen).to(device)
            tt = torch.full((len(scenes),), t, device=device, dtype=torch.long)
            unet(sched.add_noise(z0, noise, tt), tt, encoder_hidden_states=cond)
    iou_shape, iou_colour = [], []
    for b, s in enumerate(scenes):
        for k, o in enumerate(s.objects):
            iou_shape.append(map_iou(attention_map(store, b, word_index(tok, s.caption, o.shape, s.shapes[:k].count(o.shape)), res), s.masks[k]))
            iou_colour.append(map_iou(attention_map(store, b, word_index(tok, s.caption, o.colour), res), s.masks[k]))
    results["attn_iou_shape_word"] = float(np.mean(iou_shape))
    results["attn_iou_colour_word"] = float(np.mean(iou_colour))
    results["attn_iou_object_word"] = float(np.mean(np.maximum(iou_shape, iou_colour)))
    print(
        f"cross-attention IoU on world scenes (t={args.timesteps}): shape word {results['attn_iou_shape_word']:.3f}, "
        f"colour word {results['attn_iou_colour_word']:.3f}",
        flush=True,
    )

    # ---- generation
    singles = [s for s in (sample_scene(rng, WorldConfig(size=size, two_object_prob=0.0)) for _ in range(args.n))]
    doubles = [s for s in (sample_scene(rng, WorldConfig(size=size, two_object_prob=1.0)) for _ in range(args.n // 2))]
    uncond1 = encode(tok, te, [""], device)
    images_all = []
    for w in args.guidance:
        gen = torch.Generator().manual_seed(args.seed)
        store = []
        prompts = [s.caption for s in singles]
        cond = encode(tok, te, prompts, device)
        with recording_cross_attention(unet, store, res * res):
            z = ddim_sample(unet, sched, cond, uncond1.expand_as(cond), w, args.steps, gen, (len(prompts), 4, res, res))
        imgs = to_uint8(vae, z)
        images_all.append(imgs)
        sc = [score_image(im, s.objects[0].colour, s.objects[0].shape, s.background_label) for im, s in zip(imgs, singles)]
        # recorded maps are (2B, Q, K) per layer and step; the cond half is the second
        n = len(prompts)
        gen_iou = []
        for b, (im, s) in enumerate(zip(imgs, singles)):
            found = detect_objects(im)
            if not found:
                gen_iou.append(0.0)
                continue
            m = torch.stack([a[n + b, :, word_index(tok, s.caption, s.objects[0].shape)] for a in store]).mean(0).view(res, res)
            gen_iou.append(map_iou(m, found[0].mask))
        r = {
            "colour_acc": float(np.mean([c.colour_ok for c in sc])),
            "shape_acc": float(np.mean([c.shape_ok for c in sc])),
            "background_acc": float(np.mean([c.background_ok for c in sc])),
            "all_three_acc": float(np.mean([c.colour_ok and c.shape_ok and c.background_ok for c in sc])),
            "gen_attn_iou_shape_word": float(np.mean(gen_iou)),
        }
        gen = torch.Generator().manual_seed(args.seed + 1)
        prompts2 = [s.caption for s in doubles]
        if prompts2:
            cond2 = encode(tok, te, prompts2, device)
            z2 = ddim_sample(unet, sched, cond2, uncond1.expand_as(cond2), w, args.steps, gen, (len(prompts2), 4, res, res))
            imgs2 = to_uint8(vae, z2)
            m2 = [score_multi(im, s.colours, s.shapes) for im, s in zip(imgs2, doubles)]
            r["two_object_colour_found"] = float(np.mean([a for a, _ in m2]))
            r["two_object_pair_found"] = float(np.mean([b for _, b in m2]))
            r["two_object_background_acc"] = float(
                np.mean([score_image(im, "", "", s.background_label).background_ok for im, s in zip(imgs2, doubles)])
            )
            images_all.append(imgs2)
        results[f"guidance_{w:g}"] = r
        print(f"guidance {w:g}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
    if args.edit_scenes:
        results["edits"] = edit_scores(args.model, args.edit_scenes)
        print("edits after DDIM inversion: " + ", ".join(f"{k} {v:.3f}" for k, v in results["edits"].items()),
              flush=True)
    results["seconds"] = round(time.time() - t_start, 1)
    if args.grid:
        import cv2

        imgs = np.concatenate(images_all)
        cols = 16
        rows = -(-len(imgs) // cols)
        pad = np.zeros((rows * cols - len(imgs),) + imgs.shape[1:], np.uint8)
        g = np.concatenate([imgs, pad]).reshape(rows, cols, *imgs.shape[1:])
        g = g.transpose(0, 2, 1, 3, 4).reshape(rows * imgs.shape[1], cols * imgs.shape[2], 3)
        cv2.imwrite(args.grid, g[..., ::-1])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(json.dumps(results), flush=True)
    if args.card:
        if not Path(args.model).is_dir():
            raise SystemExit("--card needs a diffusers directory, not a checkpoint")
        (Path(args.model) / "README.md").write_text(model_card(Path(args.model), unet, te, vae, results, args))
    return 0


EDIT_STEPS, EDIT_GUIDANCE, EDIT_SEED = 25, 4.0, 7   # tools/tables.py methods' table: its steps, guidance, scenes


def edit_scores(model: str, n_scenes: int) -> dict:
    """The model's edits of ``n_scenes`` one-object world scenes after DDIM inversion, with
    prompt_to_prompt at its reference's defaults, as ``tools/tables.py methods`` scores them: the
    asked colour / shape found, the object's IoU with the source's, the background's PSNR (dB)."""
    import tables

    from videdit import load_model

    edit = tables.method_edit(load_model(model), EDIT_STEPS, EDIT_GUIDANCE, "ddim", "prompt_to_prompt", {}, {},
                              tables.scratch_dir("videdit-toy-scores-"))
    cells = tables.edit_scores(tables.one_object_scenes(EDIT_SEED, n_scenes), edit)
    names = ("colour_ok", "colour_iou", "colour_bg_psnr", "shape_ok", "shape_iou", "shape_bg_psnr")
    return {name: float(v) for name, v in zip(names, cells)}


def model_card(path: Path, unet, te, vae, results: dict, args) -> str:
    """Markdown model card from the export's training_state.json and the scores."""
    info = json.loads((path / "training_state.json").read_text()) if (path / "training_state.json").exists() else {}
    a = info.get("args", {})
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    lines = [
        "# videdit toy text-to-image model",
        "",
        "A tiny Stable-Diffusion-architecture model (diffusers `StableDiffusionPipeline`: AutoencoderKL,",
        "CLIPTextModel, UNet2DConditionModel, DDIMScheduler) trained from scratch on CPU on the synthetic",
        "shapes world of `videdit.toy.world`, to demonstrate and measure edits without downloading weights.",
        "Not a general image model: it knows only captions like",
        "\"a red circle on a gray background\" and \"a red circle and a blue square on a white and black background\".",
        "",
        "## Architecture",
        "",
        f"- VAE: AutoencoderKL, blocks {a.get('vae_channels')}, 64x64x3 -> 16x16x4 latents, "
        f"{count(vae) / 1e6:.2f}M params, scaling_factor {vae.config.scaling_factor:.4f} (1 / latent std)",
        f"- Text encoder: CLIPTextModel, hidden {te.config.hidden_size}, {te.config.num_hidden_layers} layers, "
        f"max length {te.config.max_position_embeddings}, {count(te) / 1e6:.3f}M params; "
        "CLIP-style BPE tokenizer whose merges make each world word one token",
        f"- UNet: UNet2DConditionModel, blocks {list(unet.config.block_out_channels)}, cross-attention at 16x16 and 8x8 "
        f"(and the 4x4 mid block), {count(unet) / 1e6:.2f}M params, epsilon prediction",
        "- Scheduler: DDIM, scaled_linear betas 0.00085-0.012, 1000 steps (SD 1.x settings)",
        "- Weights: UNet and VAE stored fp16 (load as float32), text encoder fp32",
        "",
        "## Training",
        "",
        "- Data: infinite world scenes generated on the fly, seeded per step (1-2 objects, 3 shapes, 6 colours,",
        "  plain or two-tone backgrounds, anti-aliased), caption dropped to \"\" 10% of the time for CFG",
        f"- VAE: {info.get('vae_steps')} steps, batch {a.get('vae_batch')}, MSE + L1 + KL (weight {a.get('vae_kl')})",
        f"- UNet + text encoder (jointly): {info.get('step')} steps, batch {info.get('batch')}, AdamW lr "
        f"{a.get('lr')} (UNet) / {a.get('text_lr')} (text), min-SNR-{a.get('min_snr')} weighting, "
        f"offset noise {a.get('offset_noise')}, EMA {a.get('ema')} (exported weights are the EMA)",
        f"- Cross-attention grounding loss (weight {a.get('attn_loss')}; TokenCompose-style token loss, Wang et al. 2024):",
        "  each object's colour and shape word is trained to put its 16x16 and 8x8 attn2 attention inside",
        "  the object's ground-truth mask, so prompt-to-prompt-style edits have maps that localise",
        "  (switched on at UNet step ~1040; the VAE was trained with extra loss weight on and near objects)",
        f"- Wall time: {info.get('wall_minutes')} min in all, on {info.get('device')} ({info.get('hardware')}), "
        "shared with other jobs",
        "- Reproduce: `python tools/train_toy.py --out runs/toy` (resumable with `--resume`); this model's run was",
        "  stopped and resumed several times (VAE loss reweighted at VAE step 600, VAE cut at 1610 steps,",
        "  grounding loss from UNet step ~1040), see `training_state.json` for the last arguments",
        "",
        f"## Scores of the weights exported at UNet step {info.get('step')} "
        f"(`python tools/toy_scores.py {args.model} --n {args.n} --guidance {' '.join(f'{w:g}' for w in args.guidance)}`)",
        "",
        f"DDIM {args.steps} steps; {args.n} single-object world prompts, {args.n // 2} two-object prompts.",
        "",
        f"- Cross-attention IoU (world scenes noised to t={args.timesteps}, 16x16 attn2 maps averaged over heads, "
        f"layers and timesteps, max-normalised, threshold 0.5): shape word {results['attn_iou_shape_word']:.3f}, "
        f"colour word {results['attn_iou_colour_word']:.3f}",
    ]
    for w in args.guidance:
        r = results[f"guidance_{w:g}"]
        lines.append(f"- Guidance {w:g}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
    if "edits" in results:
        e = results["edits"]
        lines.append(f"- Edits of {args.edit_scenes} one-object world scenes (seed {EDIT_SEED}) after DDIM inversion, "
                     f"prompt_to_prompt at its defaults, {EDIT_STEPS} steps, guidance {EDIT_GUIDANCE:g} (`python "
                     f"tools/tables.py methods --scenes {args.edit_scenes} --steps {EDIT_STEPS} --guidance "
                     f"{EDIT_GUIDANCE:g} --only prompt_to_prompt` scores the same): colour edit "
                     f"{e['colour_ok']:.0%} found, IoU {e['colour_iou']:.2f}, background PSNR "
                     f"{e['colour_bg_psnr']:.1f} dB; shape edit {e['shape_ok']:.0%}, IoU {e['shape_iou']:.2f}, "
                     f"{e['shape_bg_psnr']:.1f} dB")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
