"""DDIM with noise for dance: the stochastic DDIM step of DDPO and DanceGRPO for diffusion policies.

The sampler expects a policy that predicts the noise ``eps`` (``prediction_type = "epsilon"``) of a
discrete-time diffusion model, ``x_t = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps``, and steps
from the noisiest timestep of its schedule down to the clean sample.
"""

from dance_ddim_sampler.sampler import DDIMConfig, DDIMSampler
from dance_ddim_sampler.schedule import alphas_cumprod, ddim_schedule, ddim_timesteps

__all__ = ["DDIMConfig", "DDIMSampler", "alphas_cumprod", "ddim_schedule", "ddim_timesteps"]
