"""InstructPix2Pix (Brooks, Holynski & Efros 2023, "InstructPix2Pix: Learning to Follow Image
Editing Instructions", CVPR; timothybrooks/instruct-pix2pix ``edit_cli.py``, diffusers'
``StableDiffusionInstructPix2PixPipeline``): an 8-channel UNet conditioned on the source frame
(its VAE latents, the posterior's mode, unscaled, concatenated after the noisy latents' 4 channels)
and on the instruction (the target prompt), sampled with Euler ancestral steps from seeded noise
(the ``noise`` inversion; 100 steps) under guidance in both (Eq. 3):

    e = e(z, 0, 0) + s_T (e(z, I, T) - e(z, I, 0)) + s_I (e(z, I, 0) - e(z, 0, 0))

with s_T the edit's guidance (7.5) and s_I ``image_guidance`` (1.5); ``0`` is the negative prompt
for the text and zeros for the image. The instruction is the target prompt; the source prompt is
not read (the source frame is the condition).

How the three terms fit the one loop: as three *unguided branches* of one plan (text + image,
negative + image, negative + no image), whose per-call batch ``(half, branch, frame)`` is diffusers'
batch ``[text+image, uncond+image, uncond+zero image]`` of 3F in the same order. The image
channels go in through a :class:`SourceImage` UNet input (zeros in the third branch), and a step
callback (:class:`ImageTextGuidance`) combines the three outputs into every branch, so the
branches stay one latent, stepped by one sampler with one noise. Nothing in the loop changes,
and attention modules see what they see in the reference: cross-frame attention acts per branch,
as Text2Video-Zero's ``CrossFrameAttnProcessor(unet_chunk_size=3)`` acts per chunk. Both scales
at 1 make Eq. 3 the conditional output alone: one branch then.

Departure: diffusers skips guidance entirely where ``guidance_scale <= 1`` or
``image_guidance_scale < 1`` (``do_classifier_free_guidance``); the paper's Eq. 3 and the official
``CFGDenoiser`` always combine the three terms, and so does this editor (they agree at 1 and 1 and
wherever guidance > 1 and image guidance >= 1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from videdit.core.conditioning import UnetCall, UnetInput
from videdit.core.euler import EulerAncestral, euler_schedule, start_scale
from videdit.core.loop import Branches, StepCallback, StepContext
from videdit.editing.registry import EditContext, EditPlan, register_editor
from videdit.errors import VideditError
from videdit.inversion.noise import after_initial_noise
from videdit.registry import TEXT_TO_IMAGE

REFERENCE = ("Brooks, Holynski & Efros 2023, InstructPix2Pix (CVPR); timothybrooks/instruct-pix2pix edit_cli.py "
             "(100 steps, text 7.5, image 1.5, Euler ancestral) and diffusers' StableDiffusionInstructPix2PixPipeline")
NEEDS_PIX2PIX = ("it needs an InstructPix2Pix model (8-channel UNet conditioned on the source frame), "
                 "e.g. --model timbrooks/instruct-pix2pix")


@dataclass(frozen=True)
class InstructPix2PixConfig:
    image_guidance: float = 1.5   # s_I of Eq. 3 (edit_cli.py --cfg-image); the text's s_T is the edit's guidance

    def __post_init__(self):
        if isinstance(self.image_guidance, bool) or not isinstance(self.image_guidance, (int, float)) \
                or not 0 <= self.image_guidance <= 50:
            raise VideditError(f"instruct_pix2pix image_guidance must be a number in [0, 50] (the reference's is "
                               f"1.5), got {self.image_guidance!r}")


class SourceImage(UnetInput):
    """InstructPix2Pix's image conditioning: the frames' image latents (F, 4, h, w) concatenated
    after the noisy latents' channels of every call, per branch, or zeros in the branches where
    ``with_image`` is False (the unconditional image)."""

    def __init__(self, latents: torch.Tensor, with_image: tuple[bool, ...]):
        self.latents, self.with_image = latents, with_image

    def add(self, unet, call: UnetCall) -> UnetCall:
        info = call.info
        if info.n_branches != len(self.with_image):
            raise ValueError(f"SourceImage: {len(self.with_image)} branches declared, the call has {info.n_branches}")
        image = self.latents[list(info.frames)].to(call.sample)                 # (fb, 4, h, w)
        image = torch.stack([image if w else torch.zeros_like(image) for w in self.with_image])   # (nb, fb, 4, h, w)
        image = image.expand(info.halves, *image.shape).flatten(0, 2)          # (halves*nb*fb, 4, h, w)
        return dataclasses.replace(call, sample=torch.cat([call.sample, info.to_run(image)], dim=1))


class ImageTextGuidance(StepCallback):
    """Eq. 3 on the three branches' outputs (text + image, negative + image, negative + no image),
    written to every branch."""

    def __init__(self, text: float, image: float):
        self.text, self.image = text, image

    def on_noise(self, ctx: StepContext, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        cond, image, uncond = out                                              # each (F, C, h, w)
        guided = uncond + self.text * (cond - image) + self.image * (image - uncond)
        return guided.expand_as(out)


@register_editor("instruct_pix2pix", InstructPix2PixConfig, reference=REFERENCE, inversion="noise",
                 schedule=euler_schedule, steps=100, guidance=7.5,
                 models={"families": ("InstructPix2Pix",), "refuses": {f: NEEDS_PIX2PIX for f in TEXT_TO_IMAGE},
                         "controlnet": "its reference conditions on the source frame's channels, not a ControlNet"})
def instruct_pix2pix(ctx: EditContext, config: InstructPix2PixConfig) -> EditPlan:
    """Edit by instruction: an InstructPix2Pix model conditioned on each frame, Euler ancestral from noise."""
    inv = ctx.inversion
    x = inv.noise                                                              # (F, C, h, w)
    if inv.start_step == 0:   # pure noise: at diffusers' init_noise_sigma
        x = x * start_scale(ctx.model.scheduler_config, ctx.schedule)
    image = inv.source / ctx.model.scaling_factor                              # (F, 4, h, w): the posterior mean
    generator = after_initial_noise(inv.source.shape, ctx.seed)   # each step's noise, as diffusers draws it
    if ctx.guidance == 1 and config.image_guidance == 1:    # Eq. 3 is the conditional output
        with_image, cond, callbacks = (True,), ctx.target_cond, []
    else:
        with_image = (True, True, False)
        cond = torch.cat([ctx.target_cond, ctx.uncond.to(ctx.target_cond), ctx.uncond.to(ctx.target_cond)])
        callbacks = [ImageTextGuidance(ctx.guidance, config.image_guidance)]
    nb = len(with_image)
    return EditPlan(x=x[None].repeat(nb, 1, 1, 1, 1),                          # (nb, F, C, h, w)
                    branches=Branches(cond=cond, uncond=cond, guidance=(1.0,) * nb), callbacks=callbacks,
                    inputs=[SourceImage(image, with_image)], sampler=EulerAncestral(generator), output_branch=0)

