"""dance: GRPO post-training for image and video generators, with a plugin registry."""

from dance.offline import go_offline

go_offline()  # before any Hugging Face library is imported: they read the switches at import

from dance.hookspecs import hookimpl  # noqa: E402 - after going offline
from dance.interfaces import (  # noqa: E402 - after going offline
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
