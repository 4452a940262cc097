"""Load a diffusion model's parts and run its text encoder and VAE in batches."""

from videdit.models.loading import DEFAULT_MODEL, Model, load_model, resolve_device, resolve_dtype, unet_dtype

__all__ = ["DEFAULT_MODEL", "Model", "load_model", "resolve_device", "resolve_dtype", "unet_dtype"]
