"""VideoAlign's video preprocessing from tensors, checked against transformers' Qwen2-VL processor
and against frame counts and sizes worked out by hand from qwen-vl-utils' rules."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from dance.interfaces import Prompt
from dance_videoalign.frames import (
    num_sampled_frames,
    sampled_frame_indices,
    smart_resize,
    to_uint8,
)
from dance_videoalign.prompt import REWARD_TOKENS, TEMPLATE_SHA256, instructions, template


@pytest.mark.parametrize(
    "total, video_fps, fps, expected",
    [
        # DanceGRPO's HunyuanVideo rollouts: 53 frames written at 8 fps = 6.6 s, 2 fps -> 13.25,
        # rounded to an even 14.
        (53, 8.0, 2.0, 14),
        # The same 53 frames taken as 24 fps video last 2.2 s: 4.4 frames, at least 4 -> 4.
        (53, 24.0, 2.0, 4),
        (129, 24.0, 2.0, 10),  # 10.75 -> round(5.375) * 2 = 10
        (5, 8.0, 2.0, 4),  # 1.25 -> the 4-frame minimum
        (3, 8.0, 2.0, 2),  # the minimum capped at the largest even count, 2
        (2, 8.0, 2.0, 2),
        (100000, 1.0, 2.0, 768),  # the 768-frame maximum
        (30, 10.0, 2.0, 6),
    ],
)
def test_frame_counts_follow_smart_nframes(total, video_fps, fps, expected) -> None:
    assert num_sampled_frames(total, video_fps, fps) == expected


def test_fixed_frame_count_rounds_to_even() -> None:
    assert num_sampled_frames(53, 8.0, 2.0, num_frames=7) == 8
    assert num_sampled_frames(6, 8.0, 2.0, num_frames=9) == 6  # capped at the video length


def test_single_frame_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least 2 frames"):
        num_sampled_frames(1, 8.0, 2.0)


def test_frame_indices_uniform_float32_half_to_even() -> None:
    # 53 frames, 14 read: step 52 / 13 = 4 exactly.
    assert sampled_frame_indices(53, 8.0, 2.0).tolist() == list(range(0, 53, 4))
    # 6 frames, 4 read: 0, 5/3, 10/3, 5 -> 0, 2, 3, 5.
    assert sampled_frame_indices(6, 8.0, 2.0).tolist() == [0, 2, 3, 5]
    # 8 frames, num_frames 3 rounds to 4: 0, 7/3, 14/3, 7 -> 0, 2, 5, 7.
    assert sampled_frame_indices(8, 8.0, 2.0, num_frames=3).tolist() == [0, 2, 5, 7]
    # 11 frames, num_frames 4: 0, 10/3, 20/3, 10 -> 0, 3, 7, 10.
    assert sampled_frame_indices(11, 8.0, 2.0, num_frames=4).tolist() == [0, 3, 7, 10]
    assert sampled_frame_indices(4, 8.0, 2.0).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "height, width, expected",
    [
        (480, 480, (448, 448)),  # DanceGRPO's 480 x 480 videos: 17 * 28 squared is too large
        (480, 848, (336, 588)),
        # Below 128 * 28 * 28: scaled up by sqrt(32), 56 * 5.66 = 316.8 -> ceil to 12 * 28.
        (56, 56, (336, 336)),
    ],
)
def test_smart_resize_by_hand(height, width, expected) -> None:
    assert smart_resize(height, width) == expected


def test_smart_resize_matches_transformers() -> None:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as theirs

    for height in (28, 56, 90, 240, 333, 480, 720, 1080):
        for width in (28, 64, 128, 480, 640, 854, 1280, 1920):
            for low, high in ((128 * 28 * 28, 448 * 448), (56 * 56, 448 * 448), (3136, 50000)):
                ours = smart_resize(height, width, 28, low, high)
                assert ours == theirs(height, width, 28, low, high), (height, width, low, high)


def test_uint8_quantisation_rounds() -> None:
    x = torch.tensor([0.0, 0.4 / 255, 0.6 / 255, 127.5 / 255, 1.0, 1.5, -0.2])
    assert to_uint8(x).tolist() == [0, 0, 1, 128, 255, 255, 0]


def _reference_batch(reward, media: torch.Tensor, prompts: list[str]):
    """What VideoAlign's inference hands the model, computed with transformers' Qwen2VLProcessor
    on frames read and resized as qwen-vl-utils does (independently of the plugin's patching)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(reward.loaded.weights.parents[2] / "base")
    processor.tokenizer.padding_side = "right"
    processor.tokenizer.add_special_tokens({"additional_special_tokens": list(REWARD_TOKENS)})
    total, height, width = media.shape[2:]
    index = sampled_frame_indices(total, reward.config.fps, 2.0)
    videos = []
    for video in media:
        frames = np.clip(np.round(video[:, index].numpy() * np.float32(255)), 0, 255)
        frames = torch.from_numpy(frames.astype(np.uint8)).transpose(0, 1)  # [n, 3, H, W]
        size = smart_resize(height, width, 28, reward.config.min_pixels, 448 * 448)
        videos.append(resize(frames, list(size), InterpolationMode.BICUBIC, antialias=True))
    chats = [
        [
            {
                "role": "user",
                "content": [{"type": "video"}, {"type": "text", "text": instructions(p)}],
            }
        ]
        for p in prompts
    ]
    text = processor.apply_chat_template(chats, tokenize=False, add_generation_prompt=True)
    return processor(
        text=text, videos=videos, padding=True, return_tensors="pt", cap_pixels_per_frame=False
    )


@pytest.mark.parametrize("shape", [(3, 9, 56, 84), (3, 6, 70, 40)])
def test_inputs_match_transformers_processor(shared_reward, shape) -> None:
    media = torch.rand((2, *shape), generator=torch.Generator().manual_seed(0))
    prompts = ["a cat", "a red car driving along a river at night, camera moves slowly"]
    pixel_values, grid = shared_reward.prepare_videos(media)
    input_ids, attention_mask = shared_reward.prepare_text([Prompt(p) for p in prompts], grid)
    ref = _reference_batch(shared_reward, media, prompts)
    assert torch.equal(grid, ref["video_grid_thw"])
    torch.testing.assert_close(pixel_values, ref["pixel_values_videos"], atol=1e-5, rtol=1e-5)
    assert torch.equal(input_ids, ref["input_ids"])
    assert torch.equal(attention_mask, ref["attention_mask"])
    # Right padding: the shorter prompt's row ends in padding, and every row starts with text.
    assert attention_mask[:, 0].all() and not attention_mask[0, -1]


def test_danceGRPO_sized_video_grid(shared_reward) -> None:
    # 53 frames of 480 x 480 at 8 fps: 14 frames of 448 x 448 -> 7 x 32 x 32 patches.
    media = torch.rand(1, 3, 53, 480, 480, generator=torch.Generator().manual_seed(1))
    reward = shared_reward
    saved = reward.config.min_pixels
    reward.config.min_pixels = 128 * 28 * 28
    try:
        pixel_values, grid = reward.prepare_videos(media)
    finally:
        reward.config.min_pixels = saved
    assert grid.tolist() == [[7, 32, 32]]
    assert pixel_values.shape == (7 * 32 * 32, 3 * 2 * 14 * 14)


def test_prompt_is_the_published_text() -> None:
    text = template()
    assert hashlib.sha256(text.encode()).hexdigest() == TEMPLATE_SHA256
    positions = [text.index(token) for token in REWARD_TOKENS]
    assert positions == sorted(positions)  # VQ, MQ, TA in that order
    filled = instructions("a {weird} prompt")
    assert "Textual prompt - a {weird} prompt\n" in filled
