"""dance: GRPO post-training for image and video generators, with a plugin registry."""

from dance.hookspecs import hookimpl
from dance.interfaces import (
    Advantage,
    Conditioning,
    Policy,
    Prompt,
    Reward,
    RewardOutput,
    Runtime,
    Sampler,
    Schedule,
    StepOutput,
)

__version__ = "0.1.0"

__all__ = [
    "Advantage",
    "Conditioning",
    "Policy",
    "Prompt",
    "Reward",
    "RewardOutput",
    "Runtime",
    "Sampler",
    "Schedule",
    "StepOutput",
    "hookimpl",
]
