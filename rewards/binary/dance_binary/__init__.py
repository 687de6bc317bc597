"""Binary (thresholded) reward over any other dance reward."""

from dance_binary.reward import BinaryConfig, BinaryReward

__all__ = ["BinaryConfig", "BinaryReward"]
