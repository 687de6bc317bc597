"""dance: GRPO post-training for image and video generators, with a plugin registry."""

from dance.offline import go_offline

go_offline()  # before any Hugging Face library is imported: they read the switches at import

from dance.hookspecs import hookimpl  # noqa: E402 - after going offline
from dance.interfaces import (  # noqa: E402 - after going offline
    Advantage,
    Conditioning,
    Objective,
    Policy,
    Prompt,
    Reward,
    RewardOutput,
    Rollout,
    Runtime,
    Sampler,
    Schedule,
    StepOutput,
    TrainBatch,
    TrainingContext,
)

__version__ = "0.1.0"

__all__ = [
    "Advantage",
    "Conditioning",
    "Objective",
    "Policy",
    "Prompt",
    "Reward",
    "RewardOutput",
    "Rollout",
    "Runtime",
    "Sampler",
    "Schedule",
    "StepOutput",
    "TrainBatch",
    "TrainingContext",
    "hookimpl",
]
