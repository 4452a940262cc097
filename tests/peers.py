"""diffusers' own pipelines built from a videdit :class:`~videdit.models.Model`'s parts: the
peers of the equivalence tests (fp32, CPU, tiny-random, one frame)."""

from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline


def stable_diffusion(model, steps_offset: int | None = None) -> StableDiffusionPipeline:
    """``StableDiffusionPipeline`` on ``model``'s UNet, VAE, text encoder and tokenizer (the same
    modules, not copies) with a ``DDIMScheduler`` from its scheduler config, ``steps_offset``
    replaced where given (as ``EditSettings.steps_offset`` does; set after construction, since
    the pipeline's ``__init__`` rewrites a steps_offset other than 1 to 1). Run it with ``eta=0``
    (DDIM's default) and ``output_type="latent"``: it returns the scaled latents videdit's edits
    return; DDIM's ``init_noise_sigma`` is 1, so ``latents=`` is the start noise as given."""
    config = dict(model.scheduler_config)
    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=DDIMScheduler.from_config(config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    if steps_offset is not None:
        pipe.scheduler = DDIMScheduler.from_config({**config, "steps_offset": steps_offset})
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.init_noise_sigma == 1.0
    return pipe


def latent_edit(pipe, latents, prompt: str, steps: int, guidance: float, **kw):
    """The pipeline's clean latents (1, C, h, w) from start noise ``latents`` (1, C, h, w)."""
    size = latents.shape[-1] * pipe.vae_scale_factor
    return pipe(prompt=prompt, latents=latents, num_inference_steps=steps, guidance_scale=guidance, eta=0.0,
                height=size, width=size, output_type="latent", **kw).images


def stable_diffusion_controlnet(model, controlnet) -> "StableDiffusionControlNetPipeline":
    """``StableDiffusionControlNetPipeline`` on ``model``'s parts and ``controlnet`` (the same
    modules) with a ``DDIMScheduler`` from the model's scheduler config; run it as
    :func:`latent_edit` runs :func:`stable_diffusion`'s, with ``image=`` the condition (1, 3, H, W)
    in [0, 1] (its control image processor leaves such a tensor as it is)."""
    from diffusers import StableDiffusionControlNetPipeline

    pipe = StableDiffusionControlNetPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                             unet=model.unet, controlnet=controlnet,
                                             scheduler=DDIMScheduler.from_config(dict(model.scheduler_config)),
                                             safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def instruct_pix2pix(model):
    """``StableDiffusionInstructPix2PixPipeline`` on ``model``'s parts (an InstructPix2Pix model:
    tiny-pix2pix) with an ``EulerAncestralDiscreteScheduler`` from its scheduler config, as
    timbrooks/instruct-pix2pix ships. Run it with ``output_type="latent"`` for the scaled latents."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=EulerAncestralDiscreteScheduler.from_config(model.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stable_diffusion_xl(model) -> StableDiffusionXLPipeline:
    """``StableDiffusionXLPipeline`` on an SDXL ``model``'s parts (the same modules) with a
    ``DDIMScheduler`` from its scheduler config and ``force_zeros_for_empty_prompt`` as the model
    has it. Run it as :func:`latent_edit` does (``negative_prompt`` left out: zeros, as videdit's
    empty negative prompt on SDXL base)."""
    pipe = StableDiffusionXLPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                     text_encoder_2=model.text_encoder_2, tokenizer_2=model.tokenizer_2,
                                     unet=model.unet, scheduler=DDIMScheduler.from_config(model.scheduler_config),
                                     force_zeros_for_empty_prompt=model.zero_empty_negative)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.init_noise_sigma == 1.0
    return pipe
