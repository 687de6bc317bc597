"""The ImageReward human-preference reward (THUDM/ImageReward) for dance."""

from dance_imagereward.model import SCORE_MEAN, SCORE_STD, ImageRewardModel, load_model
from dance_imagereward.preprocess import CLIP_MEAN, CLIP_STD, preprocess
from dance_imagereward.reward import ImageReward, ImageRewardConfig
from dance_imagereward.tokenizer import load_tokenizer, tokenize

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "SCORE_MEAN",
    "SCORE_STD",
    "ImageReward",
    "ImageRewardConfig",
    "ImageRewardModel",
    "load_model",
    "load_tokenizer",
    "preprocess",
    "tokenize",
]
