"""Seconds per frame of videdit's blending/score editors next to diffusers' own pipelines, on
the same model (tiny-random saved as a diffusers directory, loaded by both), the same frames
and the same step count, side by side in one run:

- LEDITS++: diffusers' ``LEditsPPPipelineStableDiffusion`` (invert + edit; edit-friendly
  DDPM, as its DDIMScheduler selects) vs videdit's ``ddpm`` inversion + ``sega`` editor, no
  prompts, one concept, guidance-strength (noise) masks on both sides: LEDITS++'s
  cross-attention masks read the layers at 1/4 of the latent side, which tiny-random (two
  attention levels: 1 and 1/2) does not have;
- DiffEdit: diffusers' ``StableDiffusionDiffEditPipeline`` (generate_mask + invert + edit)
  vs videdit's ``ddim`` inversion + ``diffedit`` editor;
- pix2pix-zero's regularised inversion: diffusers' ``StableDiffusionPix2PixZeroPipeline.invert``
  vs videdit's ``pix2pix_zero`` inversion (when both exist; the edits differ, so inversion only).

Both sides go from uint8 frames to uint8 frames (encode, invert, edit, decode) and are
configured to spend the same UNet evaluations (counted and printed, per frame). Each run is
repeated and the fastest kept. On a CPU compare ratios only.

    OMP_NUM_THREADS=1 python tools/peer_bench.py --frames 4 --size 128 --steps 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "videos" / "wolf.mp4"
SOURCE, TARGET, CONCEPT = "a wolf in a forest", "a robot wolf in a forest", "sunglasses"


def load_frames(n: int, size: int) -> np.ndarray:
    from videdit import io

    frames, _ = io.read_clip(CLIP, io.ReadOptions(max_frames=n, size=(size, size)))
    return np.ascontiguousarray(frames[:n])


class EvalCounter:
    """UNet evaluations (batch rows) through a forward pre-hook."""

    def __init__(self, unet):
        self.rows = 0
        self.handle = unet.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.rows += int(args[0].shape[0])


def timed(fn: Callable[[], object], unet, repeats: int) -> tuple[float, int]:
    """(fastest seconds, UNet evaluations of one run)."""
    fn()  # warm-up
    counter, best = EvalCounter(unet), float("inf")
    for _ in range(repeats):
        counter.rows = 0
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    counter.handle.remove()
    return best, counter.rows


def pil(frames: np.ndarray):
    from PIL import Image

    return [Image.fromarray(f) for f in frames]


# -- videdit ------------------------------------------------------------------------------

def videdit_run(model, frames, args, **settings) -> Callable[[], np.ndarray]:
    from videdit.pipeline import EditSettings, edit_frames

    s = EditSettings(steps=args.steps, batch_size=len(frames), **settings)
    return lambda: edit_frames(model, frames, s)


def videdit_invert(model, frames, args, **settings) -> Callable[[], object]:
    from videdit.pipeline import EditSettings, invert_frames

    s = EditSettings(steps=args.steps, batch_size=len(frames), **settings)
    return lambda: invert_frames(model, frames, s)


# -- diffusers -------------------------------------------------------------------------------

def diffusers_ledits(directory: Path, frames, args):
    from diffusers import DDIMScheduler, LEditsPPPipelineStableDiffusion

    class IntTimestepDDIM(DDIMScheduler):
        """LEDITS++'s invert passes float timesteps to DDIMScheduler.add_noise, which indexes
        with them (an IndexError in diffusers 0.42); cast them. The math is unchanged."""

        def add_noise(self, original_samples, noise, timesteps):
            return super().add_noise(original_samples, noise, timesteps.long())

    pipe = LEditsPPPipelineStableDiffusion.from_pretrained(directory, safety_checker=None, feature_extractor=None,
                                                           requires_safety_checker=False)
    pipe.scheduler = IntTimestepDDIM.from_config(pipe.scheduler.config)  # DDIM: edit-friendly DDPM, as ours
    pipe.set_progress_bar_config(disable=True)
    images = pil(frames)

    def run():
        gen = torch.Generator().manual_seed(0)
        pipe.invert(image=images, source_prompt="", num_inversion_steps=args.steps, skip=0.0, generator=gen)
        return pipe(editing_prompt=[CONCEPT], edit_guidance_scale=5.0, edit_threshold=0.9, output_type="np",
                    use_intersect_mask=False, use_cross_attn_mask=False).images

    return pipe.unet, run


def diffusers_diffedit(directory: Path, frames, args):
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionDiffEditPipeline

    pipe = StableDiffusionDiffEditPipeline.from_pretrained(directory, safety_checker=None, feature_extractor=None,
                                                           requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.inverse_scheduler = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    images, n = pil(frames), len(frames)

    def run():
        gen = torch.Generator().manual_seed(0)
        mask = pipe.generate_mask(image=images, source_prompt=[SOURCE] * n, target_prompt=[TARGET] * n,
                                  num_inference_steps=args.steps, num_maps_per_mask=10, mask_encode_strength=0.5,
                                  guidance_scale=7.5, generator=gen)
        latents = pipe.invert(prompt=[SOURCE] * n, image=images, num_inference_steps=args.steps, inpaint_strength=1.0,
                              guidance_scale=1.0, generator=gen).latents
        return pipe(prompt=[TARGET] * n, mask_image=mask, image_latents=latents, inpaint_strength=1.0,
                    num_inference_steps=args.steps, guidance_scale=7.5, output_type="np", generator=gen).images

    return pipe.unet, run


def diffusers_pix2pix_zero(directory: Path, frames, args):
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionPix2PixZeroPipeline

    pipe = StableDiffusionPix2PixZeroPipeline.from_pretrained(
        directory, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        caption_generator=None, caption_processor=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.inverse_scheduler = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    images = pil(frames)

    def run():
        gen = torch.Generator().manual_seed(0)
        return pipe.invert(prompt=[SOURCE] * len(images), image=images, num_inference_steps=args.steps,
                           guidance_scale=1.0, generator=gen, output_type="latent").latents

    return pipe.unet, run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--size", type=int, default=128, help="frame side")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    from videdit.inversion import INVERSIONS
    from videdit.models import load_model
    from videdit.models.tiny import save_tiny_random

    frames = load_frames(args.frames, args.size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = save_tiny_random(Path(tmp) / "tiny-random")
        model = load_model(directory, device="cpu")
        concept = {"concepts": [{"text": CONCEPT, "scale": 5.0}], "threshold": 0.9, "masking": "noise"}
        pairs = [
            ("LEDITS++ invert+edit", diffusers_ledits,
             videdit_run(model, frames, args, guidance=1.0, inversion="ddpm",
                         inversion_params={"skip": 0, "guidance": 1.0}, editor="sega", editor_params=concept),
             "ddpm + sega"),
            ("DiffEdit mask+invert+edit", diffusers_diffedit,
             videdit_run(model, frames, args, source_prompt=SOURCE, target_prompt=TARGET, guidance=7.5,
                         inversion="ddim", inversion_params={"guidance": 1.0}, editor="diffedit",
                         editor_params={"n_samples": 10, "encode_ratio": 0.5}),
             "ddim + diffedit"),
        ]
        if "pix2pix_zero" in INVERSIONS:
            pairs.append(("pix2pix-zero inversion", diffusers_pix2pix_zero,
                          videdit_invert(model, frames, args, source_prompt=SOURCE, inversion="pix2pix_zero",
                                         inversion_params={"reference_size": 0}),
                          "pix2pix_zero inversion"))
        for task, make_peer, ours, ours_name in pairs:
            try:
                unet, peer = make_peer(directory, frames, args)
                peer_s, peer_evals = timed(peer, unet, args.repeats)
            except Exception as e:  # a pipeline missing from this diffusers version
                print(f"{task}: diffusers side failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
                peer_s, peer_evals = float("nan"), 0
            our_s, our_evals = timed(ours, model.unet, args.repeats)
            rows.append((task, ours_name, peer_s, peer_evals, our_s, our_evals))
    n = args.frames
    print(f"tiny-random, {n} frames of wolf.mp4 at {args.size}x{args.size}, {args.steps} steps, "
          f"{torch.get_num_threads()} CPU thread(s), best of {args.repeats}")
    print(f"{'task':<28}{'videdit':<24}{'diffusers s/f':>14}{'videdit s/f':>13}{'ratio':>7}"
          f"{'evals/f d':>11}{'evals/f v':>11}")
    for task, name, ps, pe, vs, ve in rows:
        print(f"{task:<28}{name:<24}{ps / n:>14.3f}{vs / n:>13.3f}{vs / ps:>7.2f}{pe / n:>11.0f}{ve / n:>11.0f}")
    print("ratio = videdit time / diffusers time (< 1: videdit faster)")


if __name__ == "__main__":
    main()
