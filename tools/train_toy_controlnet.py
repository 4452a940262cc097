#!/usr/bin/env python
"""Train a ControlNet for the toy model (``videdit/toy/model``) on canny edges, depth or pose, so that
the presets whose papers run one (Rerender-A-Video's edges, Text2Video-Zero's canny, depth and pose
variants) run on the toy world.

ControlNet (Zhang, Rao & Agrawala 2023; github.com/lllyasviel/ControlNet ``tutorial_train.py``, and
diffusers' ``train_controlnet.py``): ``ControlNetModel.from_unet`` of the toy UNet (its encoder's
weights, zero convolutions on the outputs), trained with the UNet, VAE and text encoder frozen on the
plain noise-prediction loss, the caption dropped to "" half of the time (the reference's
``--proportion_empty_prompts`` for learning from the condition alone; 0.5 in its tutorial). The
condition (``--condition``) is ``videdit.control.conditions.canny`` of the rendered scene (the
thresholds drawn per scene from the ones the presets use: Rerender's 50/100, the default 100/200), as
the pipeline makes it from a frame; or the scene's depth or pose map (``videdit.toy.world.depth_map``,
``pose_map``: what MiDaS and OpenPose would give, drawn from the world's ground truth), as a user
gives them (``--control depth=PATH``). The condition encoder shrinks 64x64 images 4x, as the toy VAE
does.

Scenes come from the world generator, seeded per step; a checkpoint is written every
``--ckpt-minutes`` and at the end, and ``--resume`` continues from it (``--init-from DIR``: from an
exported model, its card kept as the new card's ``trained_on``). ``--export DIR`` writes the diffusers
ControlNet directory (fp16 weights) and a card with the run's arguments and its scores (``--eval``:
edges of held-out scenes, sampled from noise with and without the ControlNet: the IoU of the detected
object with the scene's).

    nohup nice -n 5 python tools/train_toy_controlnet.py --out runs/cn --minutes 45 \\
        --export videdit/toy/controlnet-canny > runs/cn/train.log 2>&1 &
    (--condition depth --export videdit/toy/controlnet-depth: the depth one)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import toy_training   # tools/toy_training.py, beside this script
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
CONDITION_CHANNELS = (16, 32, 64)   # two stride-2 convolutions: 64x64 -> 16x16, the toy VAE's factor
THRESHOLDS = ((50, 100), (100, 200))


CONDITIONS = ("canny", "depth", "pose")


def condition_of(scene, kind: str, thresholds: tuple[int, int] = THRESHOLDS[1]) -> np.ndarray:
    """(H, W, 3) uint8 ``kind`` condition of ``scene``: canny edges of its image at ``thresholds``,
    or its depth or pose map."""
    from videdit.control.conditions import canny
    from videdit.toy.world import depth_map, pose_map

    if kind == "canny":
        return canny(scene.image[None], *thresholds)[0]
    return {"depth": depth_map, "pose": pose_map}[kind](scene.objects, scene.image.shape[0])


def batch(model, step: int, size: int, drop: float, kind: str = "canny"):
    """(latents, text, condition (B, 3, 64, 64) in [0, 1]) of ``size`` scenes seeded by ``step``."""
    from videdit.toy import sample_scene

    rng = np.random.default_rng(10_000_000 + step)
    scenes = [sample_scene(rng) for _ in range(size)]
    images = np.stack([s.image for s in scenes])
    edges = np.stack([condition_of(s, kind, THRESHOLDS[rng.integers(len(THRESHOLDS))]) for s in scenes])
    captions = [s.caption if rng.random() >= drop else "" for s in scenes]
    with torch.no_grad():
        latents = model.encode_images(images, batch_size=size)
        text = model.encode_text(captions, remember=False)
    condition = torch.from_numpy(edges).permute(0, 3, 1, 2).float() / 255
    return latents, text, condition


def train(a) -> None:
    from diffusers import ControlNetModel

    from videdit.models import load_model

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model("toy", device="cpu")
    for part in (model.unet, model.vae, model.text_encoder):
        part.requires_grad_(False)
    net = ControlNetModel.from_unet(model.unet, conditioning_embedding_out_channels=CONDITION_CHANNELS)
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=1e-2)
    ckpt, modules = out / "ckpt.pt", {"net": net}
    step, a.parent = toy_training.start(a, opt, modules, ckpt, lambda folder: {
        "net": ControlNetModel.from_pretrained(folder).state_dict()})
    alphas = model.scheduler().alphas_cumprod
    net.train()

    def loss_at(step: int) -> torch.Tensor:
        latents, text, condition = batch(model, step, a.batch, a.drop, a.condition)
        noisy, t, noise = toy_training.noised(latents, alphas, step)
        down, mid = net(noisy, t, encoder_hidden_states=text, controlnet_cond=condition, return_dict=False)
        pred = model.unet(noisy, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid).sample
        return F.mse_loss(pred, noise)

    losses = toy_training.train_loop(a, opt, modules, loss_at, step, ckpt)
    if a.export:
        export(net, model, Path(a.export), a, a.final_step, float(np.mean(losses[-100:])) if losses else None)


def evaluate(model, net, n: int, steps: int = 25, guidance: float = 4.0, kind: str = "canny") -> dict:
    """Held-out scenes sampled from noise under their captions, with the ControlNet on their ``kind``
    condition (canny edges at 100/200) and without: the mean IoU of the largest detected object with
    the scene's last object's mask, and how often that object has the caption's colour."""
    from videdit.control.controlnet import ControlNetInput
    from videdit.core.conditioning import unet_inputs
    from videdit.core.loop import Branches, denoise
    from videdit.core.schedule import make_schedule
    from videdit.toy import sample_scene
    from videdit.toy.scores import classify_colour, detect_objects, mask_iou

    schedule = make_schedule(model.scheduler_config, steps)
    scores = {"with": [], "without": []}
    for i in range(n):
        scene = sample_scene(np.random.default_rng(99_000 + i))
        one = scene.objects[-1]
        cond, uncond = model.encode_text([scene.caption, ""], remember=False).chunk(2)
        edges = torch.from_numpy(condition_of(scene, kind)[None]).permute(0, 3, 1, 2).float() / 255
        for run in ("with", "without"):
            g = torch.Generator().manual_seed(i)
            x = torch.randn(1, 1, 4, 16, 16, generator=g)
            inputs = [ControlNetInput(nets=(net,), scales=(1.0,), images=edges[None], active=(frozenset(),))] \
                if run == "with" else []
            with unet_inputs(model.unet, inputs):
                z = denoise(model.unet, x, schedule, Branches(cond=cond, uncond=uncond, guidance=(guidance,)))[0]
            image = model.decode_latents(z)[0]
            found = detect_objects(image)
            iou = mask_iou(found[0].mask, scene.masks[-1]) if found else 0.0
            colour_ok = classify_colour(image, scene.masks[-1]) == one.colour
            scores[run].append((iou, colour_ok))
    return {k: {"iou": float(np.mean([s[0] for s in v])), "colour": float(np.mean([s[1] for s in v]))}
            for k, v in scores.items()}


def export(net, model, folder: Path, a, step: int, loss: float | None) -> None:
    from videdit.io import atomic_path

    net.eval()
    scores = evaluate(model, net, a.eval, kind=a.condition) if a.eval else {}
    with atomic_path(folder, replace_dir=True) as tmp:
        net.to(torch.float16).save_pretrained(tmp)
        net.to(torch.float32)
        card = {"steps": step, "batch": a.batch, "lr": a.lr, "caption_drop": a.drop, "final_loss": loss,
                "condition": a.condition, "condition_channels": CONDITION_CHANNELS,
                **({"thresholds": THRESHOLDS} if a.condition == "canny" else {}), "eval": scores,
                "command": "python tools/train_toy_controlnet.py " + " ".join(a.argv), "trained_on": a.parent,
                **({"earlier_commands": a.earlier} if a.earlier else {})}
        (tmp / "training.json").write_text(json.dumps(card, indent=1))
    print(f"exported to {folder}: {json.dumps(scores)}", flush=True)


def main() -> None:
    p = toy_training.parser(__doc__, minutes=45, lr=5e-4, drop=0.5, drop_help="fraction of captions dropped to ''",
                            export_help="write the diffusers ControlNet directory here at the end", eval_scenes=16)
    p.add_argument("--condition", choices=CONDITIONS, default="canny", help="what the ControlNet is conditioned on")
    train(toy_training.parse(p))


if __name__ == "__main__":
    main()
