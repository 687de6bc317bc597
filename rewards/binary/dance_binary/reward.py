"""The binary reward of DanceGRPO's sparse-feedback experiment (Xue et al. 2025, arXiv 2505.07818):
1 when an underlying reward exceeds a threshold, else 0.

The underlying reward is any registered reward, built through the registry with its own options.
``binary = (score > threshold)``; a NaN score (a failed sample) stays NaN in both components, so the
trainer excludes the sample instead of reading it as a 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dance.config import option
from dance.errors import ConfigError, RewardError, did_you_mean
from dance.interfaces import Modality, Prompt, Reward, RewardOutput, Runtime
from dance.video.frames import modality_of


@dataclass
class BinaryConfig:
    reward: str = option("", "Name of the underlying reward to threshold (required).")
    component: str = option("", "Component of the underlying reward; '' takes its first one.")
    threshold: float = option(0.0, "The reward is 1 where the score is greater than this, else 0.")
    options: dict[str, Any] = option({}, "Config values for the underlying reward.")

    def check(self) -> None:
        if not self.reward:
            raise ConfigError(
                "reward 'binary' needs the name of the reward to threshold: set reward=NAME "
                "(see `dance plugins` for installed rewards)."
            )


class BinaryReward(Reward):
    """1 where the underlying reward's component exceeds ``threshold``, else 0 (NaN stays NaN).

    ``modalities`` on the class is every modality a reward can accept; an instance accepts
    (:meth:`accepts`) those its underlying reward accepts, and :meth:`score` rejects other media.
    """

    name = "binary"
    config_class = BinaryConfig
    modalities = ("image", "video")
    differentiable = False
    components = ("binary", "score")

    def __init__(self, config: BinaryConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        from dance.registry import get_registry  # at call time: the registry imports the plugins

        # Building it validates the name and its options (UsageError / ConfigError).
        self.inner: Reward = get_registry().create("reward", config.reward, config.options, runtime)
        accepted = tuple(m for m in type(self).modalities if self.inner.accepts(m))
        if not accepted:
            raise ConfigError(
                f"reward 'binary': reward '{config.reward}' declares no modality binary can pass "
                f"on (it declares {type(self.inner).modalities!r})."
            )
        # What this instance accepts: the class's modalities its underlying reward accepts too.
        self.accepted: tuple[Modality, ...] = accepted
        known = tuple(self.inner.components)
        self.component = config.component or known[0]
        if self.component not in known:
            raise ConfigError(
                f"reward 'binary': reward '{config.reward}' has no component "
                f"'{self.component}' (it has {', '.join(known)})."
                f"{did_you_mean(self.component, known)}"
            )

    def accepts(self, modality: Modality) -> bool:
        """Whether this instance (through its underlying reward) can score ``modality``."""
        return modality in self.accepted

    def score(self, media: torch.Tensor, prompts: Sequence[Prompt]) -> RewardOutput:
        modality = modality_of(media)
        if not self.accepts(modality):
            raise ValueError(
                f"reward 'binary' over '{self.config.reward}' accepts "
                f"{' and '.join(self.accepted)} media, got {modality} of shape "
                f"{tuple(media.shape)}"
            )
        # Thresholding has no gradient, so the underlying reward needs none either.
        with torch.no_grad():
            out = self.inner.score(media, prompts)
        if self.component not in out:
            raise RewardError(
                f"reward '{self.config.reward}' returned components {list(out)}, "
                f"without '{self.component}'"
            )
        score = out[self.component].detach().float()
        binary = (score > self.config.threshold).float()
        # (NaN > t) is False; keep NaN so a failed sample is not read as a 0.
        binary = torch.where(torch.isnan(score), score, binary)
        return {"binary": binary, "score": score}
