"""Tiny random CLIP-family models in the released file layouts, built once per session."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from dance.config import build
from dance.interfaces import Reward, Runtime
from dance_clip_rewards import tiny
from dance_clip_rewards.aesthetic import AestheticConfig, LaionAesthetic
from dance_clip_rewards.clip_score import ClipScore, ClipScoreConfig
from dance_clip_rewards.hps import HpsConfig, HpsReward
from dance_clip_rewards.pickscore import PickScore, PickScoreConfig
from dance_clip_rewards.preprocess import OPENAI_MEAN, OPENAI_STD


@dataclass(frozen=True)
class ClipFiles:
    hps: Path  # HPS_v2.1_compressed.pt layout, tiny ViT-H-14 shape
    open_clip_l14: Path  # open_clip_model.safetensors, tiny ViT-L-14 shape (QuickGELU)
    aesthetic_head: Path  # sac+logos+ava1-l14-linearMSE.pth layout
    pickscore_model: Path  # CLIPModel.save_pretrained directory
    pickscore_processor: Path  # CLIPProcessor.save_pretrained directory

    def options(self, name: str) -> dict[str, object]:
        """Reward options that point ``name`` at the tiny files."""
        return {
            "hps": {"checkpoint": str(self.hps), "model": tiny.TINY_H14},
            # CLIP score on the HPS file: any open_clip state dict of the architecture will do.
            "clip-score": {"checkpoint": str(self.hps), "model": tiny.TINY_H14, "pretrained": ""},
            "pickscore": {
                "model": str(self.pickscore_model),
                "processor": str(self.pickscore_processor),
            },
            "laion-aesthetic": {
                "head": str(self.aesthetic_head),
                "clip_checkpoint": str(self.open_clip_l14),
                "clip_model": tiny.TINY_L14,
                "clip_pretrained": "",
            },
        }[name]


def _hps_reference(image: Image.Image, size: int) -> torch.Tensor:
    """HPSv2's evaluation transform written out with torchvision (HPSv2 repository,
    hpsv2/src/open_clip/transform.py: ResizeMaxSize after ToTensor, fill 0, then Normalize)."""
    x = TF.to_tensor(image.convert("RGB"))
    height, width = x.shape[1:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new = tuple(round(dim * scale) for dim in (height, width))
        x = TF.resize(x, list(new), TF.InterpolationMode.BICUBIC)
        pad_h, pad_w = size - new[0], size - new[1]
        x = TF.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return TF.normalize(x, OPENAI_MEAN, OPENAI_STD)


@pytest.fixture(scope="session")
def hps_reference() -> Callable[[Image.Image, int], torch.Tensor]:
    return _hps_reference


REWARDS: dict[str, tuple[type[Reward], type]] = {
    "hps": (HpsReward, HpsConfig),
    "clip-score": (ClipScore, ClipScoreConfig),
    "pickscore": (PickScore, PickScoreConfig),
    "laion-aesthetic": (LaionAesthetic, AestheticConfig),
}


@pytest.fixture(scope="session")
def clip_files(tmp_path_factory: pytest.TempPathFactory) -> ClipFiles:
    root = tmp_path_factory.mktemp("clip-rewards")
    start = time.perf_counter()
    tiny.register_tiny_open_clip(root / "open_clip_configs")
    files = ClipFiles(
        hps=tiny.write_hps_checkpoint(root / "HPS_v2.1_compressed.pt", seed=0),
        open_clip_l14=tiny.write_open_clip_weights(
            root / "l14" / "open_clip_model.safetensors", tiny.TINY_L14, seed=1
        ),
        aesthetic_head=tiny.write_aesthetic_head(
            root / "sac+logos+ava1-l14-linearMSE.pth",
            tiny.TINY_CONFIGS[tiny.TINY_L14]["embed_dim"],
            seed=2,
        ),
        pickscore_model=root / "PickScore_v1",
        pickscore_processor=root / "CLIP-ViT-H-14-laion2B-s32B-b79K",
    )
    tiny.write_pickscore(files.pickscore_model, files.pickscore_processor, seed=3)
    assert time.perf_counter() - start < 20, "the tiny files should build in a few seconds"
    return files


@pytest.fixture(scope="session")
def make_reward(clip_files: ClipFiles) -> Callable[..., Reward]:
    """Build a reward by name through its config (build + validate), CPU, fp32."""

    def make(name: str, **overrides: object) -> Reward:
        cls, config_class = REWARDS[name]
        options = {**clip_files.options(name), **overrides}
        return cls(build(config_class, options), Runtime())

    return make
