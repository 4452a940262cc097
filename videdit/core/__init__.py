"""Pure diffusion steps, guidance, and the one denoising loop."""

from videdit.core.ddim import ddim_inverse_step, ddim_step, predict_x0_eps
from videdit.core.euler import EulerAncestral, euler_ancestral_step, euler_schedule
from videdit.core.guidance import cfg
from videdit.core.loop import Branches, CallInfo, Sampler, StepCallback, StepContext, denoise, predict_noise
from videdit.core.schedule import Schedule, make_schedule

__all__ = ["Branches", "CallInfo", "EulerAncestral", "Sampler", "Schedule", "StepCallback", "StepContext", "cfg",
           "ddim_inverse_step", "ddim_step", "denoise", "euler_ancestral_step", "euler_schedule", "make_schedule",
           "predict_noise", "predict_x0_eps"]
