"""Qwen-Image policy plugin for dance (DanceGRPO's Qwen-Image setting)."""

from dance_qwen_image.policy import QwenImageConfig, QwenImagePolicy

__all__ = ["QwenImageConfig", "QwenImagePolicy"]
