"""Stable Diffusion 1.x policy plugin for dance (DanceGRPO post-training of SD 1.4 / 1.5)."""

from dance_sd.policy import SDConfig, SDPolicy

__all__ = ["SDConfig", "SDPolicy"]
