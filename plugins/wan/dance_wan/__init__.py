"""Wan2.1 / Wan2.2 text-to-video and image-to-video policies for dance."""

from dance_wan.i2v import WanI2VConfig, WanI2VPolicy
from dance_wan.t2v import WanT2VConfig, WanT2VPolicy

__all__ = ["WanI2VConfig", "WanI2VPolicy", "WanT2VConfig", "WanT2VPolicy"]
