"""dance.video.frames: the frame rule that lets an image reward score videos."""

from __future__ import annotations

import pytest
import torch

from dance.video.frames import frame_indices, frames_for_image_reward, mean_over_frames, modality_of


def _video(batch: int, frames: int) -> torch.Tensor:
    # Pixel value encodes (sample, frame) so that every selected frame can be identified.
    video = torch.zeros(batch, 3, frames, 2, 2)
    for b in range(batch):
        for f in range(frames):
            video[b, :, f] = 100 * b + f
    return video


@pytest.mark.parametrize(
    ("available", "wanted", "expected"),
    [
        (16, 8, [0, 2, 4, 6, 9, 11, 13, 15]),  # linspace 0..15 in 8: 2.14 -> 2, 8.57 -> 9, ...
        (8, 3, [0, 4, 7]),  # 3.5 is a tie: torch rounds half to even
        (5, 3, [0, 2, 4]),
        (4, 8, [0, 1, 2, 3]),  # fewer frames than asked: every frame
        (6, 1, [0]),
        (1, 8, [0]),
    ],
)
def test_frame_indices(available: int, wanted: int, expected: list[int]) -> None:
    assert frame_indices(available, wanted).tolist() == expected


def test_frame_indices_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="num_frames"):
        frame_indices(4, 0)
    with pytest.raises(ValueError, match="at least one frame"):
        frame_indices(0, 4)


def test_images_pass_through() -> None:
    images = torch.rand(3, 3, 4, 4)
    out, per_sample = frames_for_image_reward(images, 8)
    assert per_sample == 1
    assert out is images
    assert torch.equal(
        mean_over_frames(torch.tensor([1.0, 2.0, 3.0]), 3), torch.tensor([1.0, 2.0, 3.0])
    )


def test_video_frames_are_sample_major() -> None:
    video = _video(batch=2, frames=5)
    images, per_sample = frames_for_image_reward(video, 3)
    assert per_sample == 3
    assert images.shape == (6, 3, 2, 2)
    # Row b * F_s + j is frame index[j] of sample b, with frames 0, 2, 4 chosen out of 5.
    assert images[:, 0, 0, 0].tolist() == [0, 2, 4, 100, 102, 104]
    assert torch.equal(images[4], video[1, :, 2])


def test_mean_over_frames_groups_by_sample() -> None:
    video = _video(batch=2, frames=5)
    images, _ = frames_for_image_reward(video, 3)
    scores = images.mean(dim=(1, 2, 3))  # [6]
    assert mean_over_frames(scores, 2).tolist() == pytest.approx([2.0, 102.0])


def test_nan_on_one_frame_makes_the_video_nan() -> None:
    scores = torch.tensor([1.0, float("nan"), 3.0, 4.0])
    out = mean_over_frames(scores, 2)
    assert torch.isnan(out[0]) and out[1] == 3.5


def test_mean_over_frames_rejects_mismatched_batch() -> None:
    with pytest.raises(ValueError, match="batch of 2"):
        mean_over_frames(torch.zeros(5), 2)


def test_modality_of() -> None:
    assert modality_of(torch.zeros(1, 3, 2, 2)) == "image"
    assert modality_of(torch.zeros(1, 3, 2, 2, 2)) == "video"
    with pytest.raises(ValueError, match="got shape"):
        modality_of(torch.zeros(3, 2, 2))
