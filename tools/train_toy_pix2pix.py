#!/usr/bin/env python
"""Train an InstructPix2Pix UNet for the toy model (``videdit/toy/model``), so that the presets whose
papers run one (Text2Video-Zero's video editing, ``configs/text2video-zero.yaml``) run on the toy world.

InstructPix2Pix (Brooks, Holynski & Efros 2023; diffusers' ``examples/instruct_pix2pix/
train_instruct_pix2pix.py``): the toy UNet with ``conv_in`` widened to 8 input channels, the new
channels' weights zero (so training starts from the toy model), the whole UNet trained with the VAE
and text encoder frozen on the noise-prediction loss of the *edited* image's latents, the source
image's latents (the posterior mode, unscaled, as the pipeline's ``prepare_image_latents``)
concatenated to the noisy ones. Conditioning dropout as the reference's ``conditioning_dropout_prob``
0.05: the text alone dropped 5% of the time, the image alone 5%, both 5% (the guidance needs both
unconditional terms).

The pairs come from the world generator with ground truth: a scene, the same scene with its front
object in another palette colour, and as the "instruction" the edited scene's caption (the toy text
encoder knows only caption words; the mechanism, an 8-channel UNet guided by text and by the source
image, is InstructPix2Pix's). Scenes are seeded per step; a checkpoint is written every
``--ckpt-minutes`` and at the end, and ``--resume`` continues from it (``--init-from DIR``: from an
exported model, its card kept as the new card's ``trained_on``). ``--export DIR`` writes the UNet
(fp16 weights; ``load_model("toy-pix2pix")`` puts it with the toy model's other parts) and a card with
the run's arguments and its scores (``--eval``: held-out scenes edited with
``configs/text2video-zero.yaml``'s editor settings: how often the front object gets the asked colour,
and the IoU of the detected object with the source's).

    nohup nice -n 5 python tools/train_toy_pix2pix.py --out runs/p2p --minutes 40 \\
        --export videdit/toy/pix2pix > runs/p2p/train.log 2>&1 &
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import toy_training   # tools/toy_training.py, beside this script
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def recoloured_scene(scene, rng):
    """``scene`` with its front object in another palette colour (drawn by ``rng``)."""
    from videdit.toy import OBJECT_COLOURS, make_scene

    front = scene.objects[-1]
    colour = rng.choice([c for c in OBJECT_COLOURS if c != front.colour])
    objects = (*scene.objects[:-1], dataclasses.replace(front, colour=str(colour)))
    return make_scene(objects, scene.background, scene.image.shape[0])


def batch(model, step: int, size: int, drop: float):
    """(edited latents, source image latents (unscaled), text, image kept (B,)) of ``size`` pairs."""
    from videdit.toy import sample_scene

    rng = np.random.default_rng(20_000_000 + step)
    sources = [sample_scene(rng) for _ in range(size)]
    edits = [recoloured_scene(s, rng) for s in sources]
    p = rng.random(size)
    no_text = p < 2 * drop                       # the reference's prompt_mask
    no_image = (p >= drop) & (p < 3 * drop)      # and image_mask
    captions = ["" if n else e.caption for e, n in zip(edits, no_text)]
    with torch.no_grad():
        target = model.encode_images(np.stack([e.image for e in edits]), batch_size=size)
        image = model.encode_images(np.stack([s.image for s in sources]), batch_size=size) / model.scaling_factor
        text = model.encode_text(captions, remember=False)
    keep = torch.from_numpy(~no_image).float().view(-1, 1, 1, 1)
    return target, image * keep, text


def widened_unet(unet):
    """A copy of ``unet`` with 8 input channels, the 4 new ones' weights zero (the reference's init)."""
    import copy

    wide = copy.deepcopy(unet)
    old = wide.conv_in
    new = torch.nn.Conv2d(8, old.out_channels, old.kernel_size, old.stride, old.padding)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :4] = old.weight
        new.bias.copy_(old.bias)
    wide.conv_in = new
    wide.register_to_config(in_channels=8)
    return wide


def train(a) -> None:
    from diffusers import UNet2DConditionModel

    from videdit.models import load_model

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model("toy", device="cpu")
    for part in (model.vae, model.text_encoder):
        part.requires_grad_(False)
    unet = widened_unet(model.unet).requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=a.lr, weight_decay=1e-2)
    ckpt, modules = out / "ckpt.pt", {"unet": unet}
    step, a.parent = toy_training.start(a, opt, modules, ckpt, lambda folder: {
        "unet": UNet2DConditionModel.from_pretrained(folder / "unet").state_dict()})
    alphas = model.scheduler().alphas_cumprod
    unet.train()

    def loss_at(step: int) -> torch.Tensor:
        target, image, text = batch(model, step, a.batch, a.drop)
        noisy, t, noise = toy_training.noised(target, alphas, step)
        return F.mse_loss(unet(torch.cat([noisy, image], 1), t, encoder_hidden_states=text).sample, noise)

    losses = toy_training.train_loop(a, opt, modules, loss_at, step, ckpt)
    if a.export:
        export(unet, Path(a.export), a, a.final_step, float(np.mean(losses[-100:])) if losses else None)


def evaluate(model, n: int, steps: int = 20) -> dict:
    """``n`` held-out scenes edited as ``configs/text2video-zero.yaml`` edits (Euler ancestral from
    seeded noise, text guidance 7.5, image guidance 1.0) at ``steps``: the fraction whose front
    object has the asked colour, and the mean IoU of the detected front object with the source's."""
    from videdit import edit_image
    from videdit.toy import sample_scene
    from videdit.toy.scores import classify_colour, detect_objects, mask_iou

    colour_ok, ious = [], []
    for i in range(n):
        rng = np.random.default_rng(99_000 + i)
        scene = sample_scene(rng)
        edit = recoloured_scene(scene, rng)
        out = edit_image(scene.image, target_prompt=edit.caption, model=model, editor="instruct_pix2pix",
                         editor_params={"image_guidance": 1.0}, steps=steps, guidance=7.5, use_cache=False,
                         size="source")
        colour_ok.append(classify_colour(out, scene.masks[-1]) == edit.objects[-1].colour)
        found = detect_objects(out)
        ious.append(max((mask_iou(f.mask, scene.masks[-1]) for f in found), default=0.0))
    return {"colour": float(np.mean(colour_ok)), "iou": float(np.mean(ious)), "scenes": n, "steps": steps}


def export(unet, folder: Path, a, step: int, loss: float | None) -> None:
    from videdit.io import atomic_path
    from videdit.models.loading import toy_pix2pix

    unet.eval()
    with atomic_path(folder, replace_dir=True) as tmp:
        unet.to(torch.float16).save_pretrained(tmp / "unet")
        unet.to(torch.float32)
        card = {"steps": step, "batch": a.batch, "lr": a.lr, "conditioning_dropout": a.drop, "final_loss": loss,
                "command": "python tools/train_toy_pix2pix.py " + " ".join(a.argv), "trained_on": a.parent,
                **({"earlier_commands": a.earlier} if a.earlier else {})}
        (tmp / "training.json").write_text(json.dumps(card, indent=1))
    if a.eval:
        card["eval"] = evaluate(toy_pix2pix(folder), a.eval)
        with atomic_path(folder / "training.json") as tmp:
            tmp.write_text(json.dumps(card, indent=1))
    print(f"exported to {folder}: {json.dumps(card.get('eval', {}))}", flush=True)


def main() -> None:
    train(toy_training.parse(toy_training.parser(
        __doc__, minutes=40, lr=1e-4, drop=0.05, drop_help="conditioning dropout (the reference's 0.05)",
        export_help="write the UNet directory here at the end", eval_scenes=24)))


if __name__ == "__main__":
    main()
