"""CLIP-family image rewards for dance: HPS-v2.1, CLIP score, PickScore, LAION aesthetic."""

from dance_clip_rewards.aesthetic import AestheticConfig, AestheticHead, LaionAesthetic
from dance_clip_rewards.base import ClipFamilyReward, ClipRewardOptions
from dance_clip_rewards.clip_score import ClipScore, ClipScoreConfig
from dance_clip_rewards.hps import HpsConfig, HpsReward
from dance_clip_rewards.pickscore import PickScore, PickScoreConfig
from dance_clip_rewards.preprocess import ImageTransform, preprocess

__all__ = [
    "AestheticConfig",
    "AestheticHead",
    "ClipFamilyReward",
    "ClipRewardOptions",
    "ClipScore",
    "ClipScoreConfig",
    "HpsConfig",
    "HpsReward",
    "ImageTransform",
    "LaionAesthetic",
    "PickScore",
    "PickScoreConfig",
    "preprocess",
]
