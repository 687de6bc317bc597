"""HunyuanVideo text-to-video and SkyReels-V1 image-to-video policies for dance."""

from dance_hunyuan_video.hunyuan import HunyuanVideoConfig, HunyuanVideoPolicy
from dance_hunyuan_video.skyreels import SkyReelsI2VConfig, SkyReelsI2VPolicy

__all__ = ["HunyuanVideoConfig", "HunyuanVideoPolicy", "SkyReelsI2VConfig", "SkyReelsI2VPolicy"]
