"""Stable Diffusion 3 / 3.5 policy plugin for dance (Flow-GRPO's SD3.5-Medium setting)."""

from dance_sd3.policy import SD3Config, SD3Policy

__all__ = ["SD3Config", "SD3Policy"]
