"""VideoAlign (VideoReward) reward for dance: VQ, MQ and TA of generated videos."""

from dance_videoalign.reward import COMPONENTS, VideoAlignConfig, VideoAlignReward

__all__ = ["COMPONENTS", "VideoAlignConfig", "VideoAlignReward"]
