"""Reward models of the GPU suite with random weights, in the files the reward plugins load.

Each recipe's rewards are kept (HPS-v2.1, CLIP score, VideoAlign); only their weights are random,
written where the reward's own loader reads them, so scoring runs the reward's own code on a
network of the real size:

* ``hps`` and ``clip-score``: open_clip ViT-H-14 (HPS-v2.1) and ViT-H-14-378-quickgelu (DFN5B),
  architectures from open_clip's bundled model configs, random bf16 weights as a safetensors file;
* ``pickscore``: a transformers ``CLIPModel`` folder with PickScore_v1's sizes
  (gpu_suite_configs/pickscore-v1.json) loaded with random weights through
  :mod:`dance.models.random_weights`, and a ``CLIPProcessor`` folder with the laion processor's
  224-pixel preprocessing;
* ``videoalign``: a Qwen2-VL-Instruct base folder with Qwen2-VL-2B-Instruct's sizes
  (gpu_suite_configs/qwen2-vl-2b-instruct.json) loaded with random weights through
  :mod:`dance.models.random_weights`, and VideoReward's ``model.pth`` holding the whole LoRA-wrapped
  model (rank 64, as the released VideoReward) drawn at random.

``--tiny`` writes the rewards' tiny counterparts (their plugins' tiny.py builders) instead. A
reward the suite does not know keeps its recipe entry unchanged (weight-free rewards need nothing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

QWEN2_VL_2B = Path(__file__).parent / "gpu_suite_configs" / "qwen2-vl-2b-instruct.json"
PICKSCORE_V1 = Path(__file__).parent / "gpu_suite_configs" / "pickscore-v1.json"
# laion/CLIP-ViT-H-14-laion2B-s32B-b79K's preprocessor_config.json (PickScore's processor):
# shortest side 224, bicubic, 224 x 224 center crop.
PICKSCORE_PIXELS = 224
# VideoReward's released peft_lora_config (KwaiVGI/VideoReward model_config.json).
VIDEOREWARD_LORA = {"lora_r": 64, "lora_alpha": 128}


class RewardFiles:
    """Reward weights written once per run and shared by every policy that uses them."""

    # The full-size architectures (a test swaps in small ones to run these paths on a CPU).
    hps_model = "ViT-H-14"
    clip_score_model = "ViT-H-14-378-quickgelu"
    clip_score_pretrained = "dfn5b"  # DFN5B's preprocessing and QuickGELU, as the recipe's
    videoalign_base_sizes = QWEN2_VL_2B
    pickscore_sizes = PICKSCORE_V1
    pickscore_pixels = PICKSCORE_PIXELS

    def __init__(self, root: Path, tiny: bool, device: torch.device) -> None:
        self.root, self.tiny, self.device = root, tiny, device
        self._done: dict[str, dict[str, Any]] = {}

    def prepare(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The recipe's reward tables, each pointed at random weights of its model."""
        out = []
        for entry in entries:
            name = entry["name"]
            if name not in self._done:
                maker = getattr(self, "_" + name.replace("-", "_"), None)
                self._done[name] = maker() if maker else {}
            out.append({**entry, **self._done[name]})
        return out

    # -- CLIP-family rewards ------------------------------------------------------------------

    def _hps(self) -> dict[str, Any]:
        if self.tiny:
            from dance_clip_rewards.tiny import TINY_H14, write_hps_checkpoint

            self._register_tiny_open_clip()
            path = write_hps_checkpoint(self.root / "hps.pt")
            return {"checkpoint": str(path), "model": TINY_H14}
        path = self._open_clip_file(self.hps_model, "hps.safetensors")
        return {"checkpoint": str(path), "model": self.hps_model}

    def _clip_score(self) -> dict[str, Any]:
        if self.tiny:
            from dance_clip_rewards.tiny import TINY_H14, write_open_clip_weights

            self._register_tiny_open_clip()
            path = write_open_clip_weights(self.root / "clip.safetensors", TINY_H14)
            return {"checkpoint": str(path), "model": TINY_H14, "pretrained": ""}
        path = self._open_clip_file(self.clip_score_model, "clip-score.safetensors")
        return {
            "checkpoint": str(path),
            "model": self.clip_score_model,
            "pretrained": self.clip_score_pretrained,
        }

    def _register_tiny_open_clip(self) -> None:
        from dance_clip_rewards.tiny import register_tiny_open_clip

        register_tiny_open_clip(self.root / "open_clip_configs")

    def _open_clip_file(self, model_name: str, file_name: str) -> Path:
        """Random bf16 weights of an open_clip architecture, built on the device."""
        import open_clip
        from safetensors.torch import save_file

        from dance.models.random_weights import ParametersOnMeta, materialise

        # The class create_model builds, from the same model config (create_model itself moves
        # the model to a device, which meta parameters cannot do).
        config = dict(open_clip.get_model_config(model_name))
        config.pop("custom_text", None)
        kind = open_clip.CustomTextCLIP if "hf_model_name" in config["text_cfg"] else open_clip.CLIP
        with ParametersOnMeta():
            model = kind(**config)
        generator = torch.Generator(self.device).manual_seed(0)
        materialise(model, self.device, torch.bfloat16, generator)
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        path = self.root / file_name
        save_file(state, str(path))
        return path

    def _pickscore(self) -> dict[str, Any]:
        from dance_clip_rewards.tiny import write_pickscore

        model, processor = write_pickscore(self.root / "pickscore", self.root / "pickscore-proc")
        if not self.tiny:
            self._full_size_pickscore(model, processor)
        return {"model": str(model), "processor": str(processor)}

    def _full_size_pickscore(self, model: Path, processor: Path) -> None:
        """PickScore_v1's sizes over the tiny folder (random weights drawn at load) and the
        laion processor's 224-pixel preprocessing."""
        from transformers import CLIPImageProcessor, CLIPProcessor

        from dance.models.random_weights import write_random_layout
        from dance_clip_rewards.tiny import clip_tokenizer

        config = json.loads((model / "config.json").read_text())
        sizes = json.loads(Path(self.pickscore_sizes).read_text())
        source = sizes.pop("_source")
        for key, value in sizes.items():
            if isinstance(value, dict):
                config[key] = {**config.get(key, {}), **value}
            else:
                config[key] = value
        write_random_layout(model, {".": config}, {".": source})
        pixels = self.pickscore_pixels
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": pixels},
            crop_size={"height": pixels, "width": pixels},
            resample=3,  # bicubic
        )
        CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer()).save_pretrained(
            processor
        )

    # -- VideoAlign ---------------------------------------------------------------------------

    def _videoalign(self) -> dict[str, Any]:
        if self.tiny:
            from dance_videoalign.tiny import build_tiny_videoalign

            return {"model": str(build_tiny_videoalign(self.root / "videoalign"))}
        from dance.models.random_weights import random_weights, write_random_layout
        from dance_videoalign.checkpoint import build_peft_model, to_legacy_keys
        from dance_videoalign.tiny import build_base, model_config

        folder = self.root / "videoalign"
        base = build_base(folder / "base")
        config = json.loads((base / "config.json").read_text())
        sizes = json.loads(Path(self.videoalign_base_sizes).read_text())
        source = sizes.pop("_source")
        config.update(sizes)
        write_random_layout(base, {".": config}, {".": source})
        reward = folder / "reward"
        (reward / "checkpoint-1").mkdir(parents=True)
        reward_config = model_config(str(base))
        reward_config["peft_lora_config"].update(VIDEOREWARD_LORA)
        (reward / "model_config.json").write_text(json.dumps(reward_config, indent=2))
        with random_weights(self.device):
            model, _ = build_peft_model(base, reward_config, dtype=torch.bfloat16)
        state = to_legacy_keys(model.state_dict())
        state = {k: v.to("cpu") for k, v in state.items()}
        torch.save(state, reward / "checkpoint-1" / "model.pth")
        del model
        return {"model": str(reward)}
