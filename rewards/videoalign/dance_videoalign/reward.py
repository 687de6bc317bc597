"""The ``videoalign`` reward: VideoAlign's VideoReward model, VQ, MQ and TA of a generated video.

VideoReward (Liu et al. 2025, "Improving Video Generation with Human Feedback", KwaiVGI/VideoAlign)
is Qwen2-VL-2B-Instruct fine-tuned with LoRA and a bias-free linear reward head. It reads a video
and VideoAlign's rating instructions (:mod:`dance_videoalign.prompt`), and the head scores the
last hidden states at three special tokens the instructions place: ``<|VQ_reward|>`` (visual
quality), ``<|MQ_reward|>`` (motion quality) and ``<|TA_reward|>`` (text alignment). With the
released ``output_dim = 1`` one head scores all three tokens; a 3-output head uses output k at token
k (VideoAlign's diagonal read-out).

Normalisation (on by default, as DanceGRPO calls it with ``use_norm=True``): each score becomes
``(x - mean) / std`` with the released ``inference_config``: VQ (x - 3.6757) / 2.2476,
MQ (x - 1.1646) / 1.3811, TA (x - 2.8105) / 2.5121. VideoAlign's ``Overall`` is VQ + MQ + TA.

Positions. The released model was trained and evaluated with transformers 4.45, whose VideoAlign
forward called the Qwen2-VL language model without position ids; the language model then used
``0 .. L-1`` on all three M-RoPE axes, i.e. plain 1D RoPE, not Qwen2-VL's 3D video positions
(``get_rope_index``, what transformers 5 computes by default). This module follows the released
model: it builds the input embeddings itself (tokens, with the vision tower's merged patches at the
``<|video_pad|>`` tokens) and passes ``position_ids = arange(L)`` on the three axes. Rows are padded
on the right (VideoAlign's ``padding_side="right"``), so a video's positions do not depend on the
rest of the batch. See :mod:`dance_videoalign.frames` for the video preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dance.config import option
from dance.errors import ModelLayoutError
from dance.interfaces import Prompt, Reward, RewardOutput, Runtime
from dance_videoalign.checkpoint import (
    BASE_EXPECTED,
    REWARD_EXPECTED,
    LoadedVideoAlign,
    load_reward_model,
    read_model_config,
    resolve_dir,
)
from dance_videoalign.frames import (
    VIDEO_MIN_PIXELS,
    patchify,
    resize_frames,
    sampled_frame_indices,
    smart_resize,
    to_uint8,
)
from dance_videoalign.prompt import conversation

COMPONENTS = ("vq", "mq", "ta")
# inference_config keys of model_config.json, in the order of COMPONENTS.
_NORM_KEYS = (("VQ_mean", "VQ_std"), ("MQ_mean", "MQ_std"), ("TA_mean", "TA_std"))
VIDEO_PAD = "<|video_pad|>"


@dataclass
class VideoAlignConfig:
    model: str = option(
        "KwaiVGI/VideoReward",
        "VideoReward folder (model_config.json, checkpoint-<step>/model.pth) or its Hugging Face "
        "repo id, looked up in the local cache only.",
    )
    base_model: str = option(
        "",
        "Qwen2-VL-Instruct folder or cached repo id; empty: model_config.json's "
        "model_name_or_path (Qwen/Qwen2-VL-2B-Instruct).",
    )
    checkpoint_step: int = option(
        -1, "Which checkpoint-<step>/ to load; -1: the highest (as VideoAlign).", ge=-1
    )
    fps: float = option(
        8.0,
        "Frame rate of the scored videos: with sample_fps it decides how many frames are read. "
        "8 is what DanceGRPO writes its HunyuanVideo and SkyReels rollouts at before scoring.",
        gt=0,
    )
    sample_fps: float | None = option(
        None, "Frames read per second of video; unset: model_config.json's fps (2).", gt=0
    )
    max_pixels: int | None = option(
        None,
        "Largest frame area after resizing; unset: model_config.json's max_frame_pixels "
        "(448 * 448).",
        gt=0,
    )
    min_pixels: int = option(
        VIDEO_MIN_PIXELS,
        "Smallest frame area after resizing (qwen-vl-utils' video minimum, 128 * 28 * 28).",
        gt=0,
    )
    normalize: bool = option(
        True, "Report (x - mean) / std with model_config.json's inference_config (use_norm)."
    )
    batch_size: int = option(4, "Videos per forward pass.", ge=1)


class VideoAlignReward(Reward):
    """VideoAlign's VQ (visual quality), MQ (motion quality) and TA (text alignment) of videos."""

    name = "videoalign"
    config_class = VideoAlignConfig
    # Video only: VideoAlign reads at least two frames (qwen-vl-utils' smart_nframes rejects
    # fewer) and was trained on clips; a still image repeated would be a motionless clip, which
    # MQ is trained to punish, so image scores would not mean what VQ/MQ/TA mean.
    modalities = ("video",)
    differentiable = False
    components = COMPONENTS

    def __init__(self, config: VideoAlignConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        reward_dir = resolve_dir(config.model, "reward model", REWARD_EXPECTED)
        model_config = read_model_config(reward_dir)
        base = config.base_model or str(model_config["model_config"].get("model_name_or_path"))
        base_dir = resolve_dir(base, "base model", BASE_EXPECTED)
        step = None if config.checkpoint_step < 0 else config.checkpoint_step
        self.loaded: LoadedVideoAlign = load_reward_model(
            reward_dir, base_dir, model_config, step, runtime.device, runtime.frozen_dtype
        )
        data = model_config["data_config"]
        self.sample_fps = float(config.sample_fps or data.get("fps") or 2.0)
        self.num_frames = data.get("num_frames")  # None in the release: fps decides
        self.max_pixels = int(config.max_pixels or data.get("max_frame_pixels") or 448 * 448)
        self.norm = self._normalisation(model_config) if config.normalize else None

    @staticmethod
    def _normalisation(model_config: dict) -> tuple[torch.Tensor, torch.Tensor]:
        inference = model_config.get("inference_config") or {}
        missing = [k for pair in _NORM_KEYS for k in pair if k not in inference]
        if missing:
            raise ModelLayoutError(
                f"model_config.json has no inference_config {', '.join(missing)}; the released "
                "VideoReward has them. Set normalize=false to report raw scores."
            )
        mean = torch.tensor([float(inference[m]) for m, _ in _NORM_KEYS], dtype=torch.float64)
        std = torch.tensor([float(inference[s]) for _, s in _NORM_KEYS], dtype=torch.float64)
        return mean, std

    # -- preprocessing ----------------------------------------------------------------------------

    def frame_indices(self, total: int) -> torch.Tensor:
        """The frames read from a ``total``-frame video at the configured frame rates."""
        return sampled_frame_indices(total, self.config.fps, self.sample_fps, self.num_frames)

    def prepare_videos(self, media: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixel_values_videos`` and ``video_grid_thw`` for finite pixels ``[b, 3, F, H, W]``."""
        batch, channels, total, height, width = media.shape
        if channels != 3:
            raise ValueError(f"VideoAlign scores RGB videos, got shape {tuple(media.shape)}")
        index = self.frame_indices(total).to(media.device)
        frames = to_uint8(media.index_select(2, index)).transpose(1, 2)  # [b, n, 3, H, W]
        spec = self.loaded.vision
        size = smart_resize(height, width, spec.factor, self.config.min_pixels, self.max_pixels)
        frames = resize_frames(frames.reshape(-1, channels, height, width), *size)
        frames = frames.reshape(batch, index.numel(), channels, *size)
        patches, grids = zip(*(patchify(video, spec) for video in frames), strict=True)
        grid = torch.tensor(grids, dtype=torch.long, device=media.device)
        return torch.cat(patches), grid

    def prepare_text(
        self, prompts: Sequence[Prompt], grid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` (right padded) for the prompts and video grids."""
        tokenizer = self.loaded.tokenizer
        merge = self.loaded.vision.merge_size**2
        texts = []
        for prompt, thw in zip(prompts, grid.tolist(), strict=True):
            text = tokenizer.apply_chat_template(
                conversation(prompt.text),
                chat_template=self.loaded.chat_template,
                tokenize=False,
                add_generation_prompt=True,
            )
            if text.count(VIDEO_PAD) != 1:
                raise ValueError(
                    f"a VideoAlign prompt may not contain {VIDEO_PAD}: {prompt.text!r}"
                )
            # As Qwen2VLProcessor: one <|video_pad|> per merged patch of the video.
            texts.append(text.replace(VIDEO_PAD, VIDEO_PAD * (thw[0] * thw[1] * thw[2] // merge)))
        encoded = tokenizer(texts, padding=True, return_tensors="pt")
        return encoded["input_ids"], encoded["attention_mask"]

    # -- model ------------------------------------------------------------------------------------

    def raw_scores(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values_videos: torch.Tensor,
        video_grid_thw: torch.Tensor,
    ) -> torch.Tensor:
        """The reward head at the three reward tokens: ``[b, 3]`` fp32 (VQ, MQ, TA), raw."""
        model = self.loaded.model
        device = self.runtime.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        inner = model.model
        embeds = inner.get_input_embeddings()(input_ids)
        vision = inner.get_video_features(
            pixel_values_videos.to(device), video_grid_thw.to(device), return_dict=True
        )
        video = torch.cat(list(vision.pooler_output)).to(embeds.dtype)
        pads = input_ids == model.config.video_token_id
        if int(pads.sum()) != video.shape[0]:
            raise ValueError(
                f"{int(pads.sum())} video tokens in the text for {video.shape[0]} video embeddings"
            )
        embeds = embeds.masked_scatter(pads.unsqueeze(-1).expand_as(embeds), video)
        # The released model's positions: 0 .. L-1 on all three M-RoPE axes (module docstring).
        positions = torch.arange(input_ids.shape[1], device=device)
        positions = positions.view(1, 1, -1).expand(3, input_ids.shape[0], -1)
        hidden = inner.language_model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions
        ).last_hidden_state
        return self.read_reward_tokens(model.rm_head(hidden), input_ids)

    def read_reward_tokens(self, head: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """``head [b, L, D]`` at each row's VQ, MQ and TA tokens: ``[b, 3]`` fp32."""
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        picked = []
        for k, token in enumerate(self.loaded.reward_token_ids):
            hits = input_ids == token
            if not bool((hits.sum(dim=1) == 1).all()):
                raise ValueError(
                    "every VideoAlign input needs each reward token exactly once; does a prompt "
                    "contain <|VQ_reward|>, <|MQ_reward|> or <|TA_reward|>?"
                )
            values = head[rows, hits.int().argmax(dim=1)]  # [b, D]
            picked.append(values[:, k] if values.shape[1] == 3 else values[:, 0])
        return torch.stack(picked, dim=1).float()

    # -- Reward -----------------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, media: torch.Tensor, prompts: Sequence[Prompt]) -> RewardOutput:
        if media.ndim != 5:
            raise ValueError(
                "VideoAlign scores videos [B, 3, F, H, W] in [0, 1], got shape "
                f"{tuple(media.shape)}"
            )
        batch = media.shape[0]
        if len(prompts) != batch:
            raise ValueError(f"got {len(prompts)} prompts for a batch of {batch}")
        out_device = media.device
        if batch == 0:
            return {name: torch.zeros(0, device=out_device) for name in self.components}
        media = media.detach().to(self.runtime.device)
        finite = torch.isfinite(media).flatten(1).all(dim=1)
        media = media.nan_to_num(0.0, posinf=1.0, neginf=0.0)
        parts = []
        step = self.config.batch_size
        for start in range(0, batch, step):
            chunk = media[start : start + step]
            pixel_values, grid = self.prepare_videos(chunk)
            input_ids, attention_mask = self.prepare_text(prompts[start : start + step], grid)
            parts.append(self.raw_scores(input_ids, attention_mask, pixel_values, grid))
        scores = torch.cat(parts).double()
        if self.norm is not None:
            mean, std = (t.to(scores.device) for t in self.norm)
            scores = (scores - mean) / std
        scores = scores.float()
        scores[~finite.to(scores.device)] = float("nan")
        return {name: scores[:, k].to(out_device) for k, name in enumerate(self.components)}
