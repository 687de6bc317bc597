"""Tensor preprocessing against the reference pipelines on the same images.

References: HPSv2's evaluation transform (ToTensor, torchvision resize of the float tensor, pad,
normalise), rebuilt here from torchvision calls; open_clip's ``image_transform`` on PIL images
(shortest / longest / squash, the real DFN5B and OpenAI settings from open_clip's table); and
transformers' CLIP image processors (torchvision and PIL backends).

Measured differences (normalised units, i.e. after dividing by std ~0.27):
* HPS: the reference itself resamples a float tensor, so ours agrees to float rounding (< 1e-5).
* PIL-based references resample uint8 images with Pillow's fixed-point bicubic and round to
  uint8: on smooth images the largest difference is below 0.02 (about 1.3/255 in pixels); on white
  noise the mean stays below 0.006 while single pixels of upsampled noise differ by up to ~0.4
  (0.1 in pixels), as much as torchvision's own uint8 tensor path differs from Pillow.
  ``antialias=True`` matters: without it downsampling differs by up to 0.34 in pixels.
A crop or pad off by one pixel moves smooth test images by more than 0.1, far above these bounds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from dance_clip_rewards import tiny
from dance_clip_rewards.preprocess import (
    OPENAI_MEAN,
    OPENAI_STD,
    clip_processor_transform,
    hps_transform,
    open_clip_transform,
    preprocess,
    resized_size,
)

SHAPES = [(30, 44), (61, 37), (100, 100), (17, 23), (45, 300)]
SMOOTH_ATOL = 0.03
NOISE_MEAN_ATOL = 0.01


def _images(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """uint8 HWC images: smooth (upsampled coarse noise) and white noise, in several shapes."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in SHAPES:
        coarse = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
        out.append(("smooth", np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))))
        out.append(("noise", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    return out


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255


def _compare(ours: torch.Tensor, reference: torch.Tensor, kind: str, where: str) -> None:
    assert ours.shape == reference.shape, f"{where}: {tuple(ours.shape)} vs {reference.shape}"
    diff = (ours - reference).abs()
    if kind == "smooth":
        assert diff.max() < SMOOTH_ATOL, f"{where}: max difference {diff.max():.4f}"
    else:
        assert diff.mean() < NOISE_MEAN_ATOL, f"{where}: mean difference {diff.mean():.4f}"


@pytest.mark.parametrize("size", [28, 224])
def test_hps_matches_the_hps_transform(hps_reference, size: int) -> None:
    transform = hps_transform({"size": size})
    assert transform.resize_mode == "longest" and transform.fill == 0.0
    for kind, array in _images():
        reference = hps_reference(Image.fromarray(array), size)
        ours = preprocess(_tensor(array), transform)[0]
        assert ours.shape == (3, size, size)
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0, msg=f"{kind}")


def test_hps_padding_is_black_and_centred() -> None:
    """A 20x40 white image becomes 14 rows of black (before normalisation), 7 above and 7 below:
    the HPS placement (top gets half the padding, rounded down)."""
    out = preprocess(torch.ones(1, 3, 20, 40), hps_transform({"size": 28}))[0]
    pixels = out * torch.tensor(OPENAI_STD).view(3, 1, 1) + torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    rows = pixels.mean(dim=(0, 2))
    torch.testing.assert_close(rows[:7], torch.zeros(7), atol=1e-5, rtol=0)
    torch.testing.assert_close(rows[7:21], torch.ones(14), atol=1e-5, rtol=0)
    torch.testing.assert_close(rows[21:], torch.zeros(7), atol=1e-5, rtol=0)


def test_hps_transform_matches_open_clip_longest_on_pil() -> None:
    """open_clip's resize_mode="longest" is HPS's geometry applied to PIL images."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    reference = image_transform_v2(PreprocessCfg(size=28, resize_mode="longest"), is_train=False)
    for kind, array in _images(seed=1):
        ours = preprocess(_tensor(array), hps_transform({"size": 28}))[0]
        _compare(ours, reference(Image.fromarray(array)), kind, f"{kind} {array.shape}")


@pytest.mark.parametrize(
    "model_name, tag", [("ViT-H-14-378-quickgelu", "dfn5b"), ("ViT-L-14", "openai")]
)
def test_anchor_preprocessing_matches_open_clip(model_name: str, tag: str) -> None:
    """The two CLIP-score anchors, with their settings read from open_clip's tables (no weights):
    DFN5B squashes to 378, OpenAI ViT-L/14 resizes the shortest side to 224 and crops."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    size = open_clip.get_model_config(model_name)["vision_cfg"]["image_size"]
    cfg = merge_preprocess_dict(
        PreprocessCfg(size=size), open_clip.get_pretrained_cfg(model_name, tag)
    )
    ours_t = open_clip_transform(cfg)
    assert ours_t.resize_mode == {"dfn5b": "squash", "openai": "shortest"}[tag]
    assert ours_t.size == (size, size)
    reference = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    for kind, array in _images(seed=2)[:6]:
        ours = preprocess(_tensor(array), ours_t)[0]
        _compare(ours, reference(Image.fromarray(array)), kind, f"{tag} {kind} {array.shape}")


def test_tiny_models_preprocess_as_open_clip(clip_files) -> None:
    """The rewards' own transforms against open_clip's create_model_and_transforms preprocess."""
    import open_clip

    from dance.config import build
    from dance.interfaces import Runtime
    from dance_clip_rewards.aesthetic import AestheticConfig, LaionAesthetic

    options = clip_files.options("laion-aesthetic")
    reward = LaionAesthetic(build(AestheticConfig, options), Runtime())
    _, _, reference = open_clip.create_model_and_transforms(tiny.TINY_L14, pretrained=None)
    for kind, array in _images(seed=3):
        ours = preprocess(_tensor(array), reward.transform)[0]
        _compare(ours, reference(Image.fromarray(array)), kind, f"{kind} {array.shape}")


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_pickscore_matches_clip_processor(clip_files, backend: str) -> None:
    from transformers import CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    cls = CLIPImageProcessor if backend == "torchvision" else CLIPImageProcessorPil
    processor = cls.from_pretrained(clip_files.pickscore_processor, local_files_only=True)
    transform = clip_processor_transform(processor)
    assert transform.crop_offset == "floor" and transform.size == (tiny.IMAGE_SIZE,) * 2
    for kind, array in _images(seed=4):
        reference = processor(images=Image.fromarray(array), return_tensors="pt")["pixel_values"]
        ours = preprocess(_tensor(array), transform)
        _compare(ours, reference, kind, f"{backend} {kind} {array.shape}")


def test_output_sizes_follow_the_references() -> None:
    shortest = open_clip_transform({"size": 224})
    # torchvision truncates the long side; transformers does the same for shortest_edge.
    assert resized_size(300, 451, shortest) == (224, int(224 * 451 / 300))
    assert resized_size(451, 300, shortest) == (int(224 * 451 / 300), 224)
    longest = hps_transform({"size": 224})
    assert resized_size(300, 451, longest) == (round(300 * 224 / 451), 224)
    squash = open_clip_transform({"size": 378, "resize_mode": "squash"})
    assert resized_size(300, 451, squash) == (378, 378)


def test_crop_offset_rules_differ_where_the_references_do() -> None:
    """A 3-pixel excess: torchvision's CenterCrop rounds 1.5 to 2, transformers floors to 1."""
    image = torch.arange(31, dtype=torch.float32).view(1, 1, 31, 1).expand(1, 3, 31, 28) / 30
    rounded = preprocess(
        image, open_clip_transform({"size": 28, "mean": (0,) * 3, "std": (1,) * 3})
    )
    assert rounded[0, 0, 0, 0].item() == pytest.approx(2 / 30)
    assert TF.center_crop(image, [28, 28])[0, 0, 0, 0].item() == pytest.approx(2 / 30)
    from dance_clip_rewards.preprocess import ImageTransform

    floored = preprocess(image, ImageTransform((28, 28), (0, 0, 0), (1, 1, 1), crop_offset="floor"))
    assert floored[0, 0, 0, 0].item() == pytest.approx(1 / 30)


def test_out_of_range_pixels_clamp_and_gradients_flow() -> None:
    image = torch.rand(2, 3, 40, 50) * 1.4 - 0.2
    image.requires_grad_(True)
    out = preprocess(image, hps_transform({"size": 28}))
    torch.testing.assert_close(
        out.detach(), preprocess(image.detach().clamp(0, 1), hps_transform({"size": 28}))
    )
    out.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
