"""dance-imagereward: the reward contract, and scores, preprocessing and tokens checked against an
independent implementation of ImageReward (imagereward_reference.py) on a tiny released-layout
checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from imagereward_reference import reference_scores, reference_transform, to_pil

from dance.config import build
from dance.errors import ConfigError, ModelLayoutError
from dance.interfaces import Prompt, Runtime
from dance.registry import load_registry
from dance.testing.reward_contract import RewardContract
from dance.video.frames import frame_indices
from dance_imagereward import CLIP_STD, ImageReward, ImageRewardConfig, preprocess
from dance_imagereward.tiny import vocabulary

PROMPTS = [
    "a photo of a cat",
    "A RED apple, highly détailed!",  # case and accents: BERT's uncased normaliser
    " ".join(["two red circles on the left"] * 8),  # longer than 35 tokens: truncated
]


def _make(options: dict, **extra) -> ImageReward:
    return ImageReward(build(ImageRewardConfig, {**options, **extra}), Runtime())


@pytest.fixture(scope="module")
def reward(tiny_options) -> ImageReward:
    return _make(tiny_options)


@pytest.fixture(scope="module")
def released(tiny_imagereward: Path) -> tuple[dict, dict]:
    """The tiny checkpoint's state dict (released key names) and its med config."""
    state = torch.load(tiny_imagereward / "ImageReward.pt", weights_only=True)
    return state, json.loads((tiny_imagereward / "med_config.json").read_text())


@pytest.fixture(scope="module")
def blip_tokens(tiny_imagereward: Path):
    """Token ids as ImageReward makes them: BLIP's init_tokenizer, then ImageReward.score's call."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(str(tiny_imagereward / "tokenizer"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        out = tokenizer(
            texts, padding="max_length", truncation=True, max_length=35, return_tensors="pt"
        )
        return out.input_ids, out.attention_mask

    return encode


def _images(batch: int, *shape: int, seed: int = 0) -> torch.Tensor:
    """Random pixels ``[batch, 3, *shape]`` on the 8-bit grid, so that a PIL copy holds exactly
    the same image."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, *shape, generator=generator) * 255).round() / 255


def reward_options(reward: ImageReward) -> dict:
    return {"model": reward.config.model, "tokenizer": reward.config.tokenizer}


class TestImageRewardContract(RewardContract):
    @pytest.fixture
    def reward(self, reward) -> ImageReward:
        return reward

    @pytest.fixture
    def media_shape(self):
        return {"image": (3, 40, 56), "video": (3, 4, 32, 24)}


class TestDifferentiableImageRewardContract(RewardContract):
    @pytest.fixture
    def reward(self, tiny_options) -> ImageReward:
        return _make(tiny_options, differentiable=True, video_frames=2, batch_size=2)


def test_scores_match_the_independent_reference(reward, released, blip_tokens) -> None:
    state, med = released
    images = _images(3, 40, 56)
    ours = reward.score(images, [Prompt(t) for t in PROMPTS])["imagereward"]
    ids, mask = blip_tokens(PROMPTS)
    expected = reference_scores(state, med, preprocess(images), ids, mask)
    torch.testing.assert_close(ours.double(), expected, atol=1e-5, rtol=0)
    # Not vacuous: scores move with the image and with the prompt.
    same_prompt = reward.score(images, [Prompt(PROMPTS[0])] * 3)["imagereward"]
    same_image = reward.score(images[:1].expand(3, -1, -1, -1), [Prompt(t) for t in PROMPTS])
    assert same_prompt.std() > 1e-3 and same_image["imagereward"].std() > 1e-3


def test_scores_match_imagereward_on_pil_images(reward, released, blip_tokens) -> None:
    """The whole of ImageReward.score: PIL image, torchvision transforms, network. Preprocessing
    differs by Pillow's 8-bit rounding (about 1/255 a pixel), hence the tolerance."""
    state, med = released
    images = _images(3, 64, 48, seed=1)
    pixels = torch.stack([reference_transform()(to_pil(image)) for image in images])
    ids, mask = blip_tokens(PROMPTS)
    expected = reference_scores(state, med, pixels, ids, mask)
    ours = reward.score(images, [Prompt(t) for t in PROMPTS])["imagereward"]
    torch.testing.assert_close(ours.double(), expected, atol=5e-4, rtol=0)


@pytest.mark.parametrize(
    "height, width", [(32, 32), (48, 64), (300, 200), (512, 384), (224, 224), (224, 300)]
)
def test_preprocessing_matches_torchvision_on_pil(height: int, width: int) -> None:
    """Within 1.5/255 per pixel (before normalisation) of ImageReward's transforms, 0.4/255 on
    average; exact when nothing is resized. Noise is the worst case for the resize."""
    images = _images(2, height, width, seed=height + width)
    ours = preprocess(images)
    expected = torch.stack([reference_transform()(to_pil(image)) for image in images])
    assert ours.shape == expected.shape == (2, 3, 224, 224)
    error = (ours - expected).abs() * torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255
    if (height, width) == (224, 224):
        assert error.max() < 1e-4
    assert error.max() <= 1.5, f"max error {error.max():.3f}/255"
    assert error.mean() <= 0.4, f"mean error {error.mean():.3f}/255"


def test_tokens_follow_imagereward(reward, tiny_imagereward: Path) -> None:
    from dance_imagereward import tokenize

    tokens = vocabulary()
    ids, mask = tokenize(reward.tokenizer, ["A photo of a Cat!", PROMPTS[2]])
    assert ids.shape == mask.shape == (2, 35)
    expected = ["[CLS]", "a", "photo", "of", "a", "cat", "!", "[SEP]"]
    # The first token stays [CLS]: ImageReward does not swap in BLIP's [ENC].
    assert ids[0, :8].tolist() == [tokens.index(t) for t in expected]
    assert mask[0].tolist() == [1] * 8 + [0] * 27 and ids[0, 8:].eq(0).all()
    assert mask[1].all() and ids[1, -1] == tokens.index("[SEP]")
    # BLIP's two added tokens come right after BERT's vocabulary.
    dec, enc = reward.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"])
    assert (dec, enc) == (len(tokens), len(tokens) + 1) and reward.tokenizer.bos_token == "[DEC]"


def test_video_scores_the_mean_of_its_frames(reward) -> None:
    video = _images(2, 6, 32, 32, seed=3)  # [B, C, F, H, W]
    prompts = [Prompt(PROMPTS[0]), Prompt(PROMPTS[1])]
    out = _make(reward_options(reward), video_frames=3).score(video, prompts)["imagereward"]
    index = frame_indices(6, 3)
    for b in range(2):
        frames = video[b].index_select(1, index).transpose(0, 1)
        alone = reward.score(frames, [prompts[b]] * 3)["imagereward"]
        torch.testing.assert_close(out[b], alone.mean(), atol=1e-5, rtol=0)


def test_non_finite_pixels_give_nan_for_that_sample_only(reward) -> None:
    images = _images(3, 32, 32, seed=4)
    prompts = [Prompt(t) for t in PROMPTS]
    clean = reward.score(images, prompts)["imagereward"]
    images[1, 0, 5, 5] = float("nan")
    images[2, 2, 0, 0] = float("inf")
    out = reward.score(images, prompts)["imagereward"]
    assert torch.isnan(out[1:]).all()
    torch.testing.assert_close(out[0], clean[0], atol=1e-6, rtol=0)
    # A video with a bad frame among the scored ones is NaN; one outside them is not.
    video = _images(1, 5, 32, 32, seed=5)
    two = _make(reward_options(reward), video_frames=2)
    video[0, :, 2] = float("nan")  # frames 0 and 4 are scored
    assert torch.isfinite(two.score(video, prompts[:1])["imagereward"]).all()
    video[0, :, 4] = float("nan")
    assert torch.isnan(two.score(video, prompts[:1])["imagereward"]).all()


def test_frozen_dtype_bf16_keeps_the_head_in_fp32(tiny_options) -> None:
    runtime = Runtime(frozen_dtype=torch.bfloat16)
    low = ImageReward(build(ImageRewardConfig, tiny_options), runtime)
    assert low.model.vision.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert low.model.text.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    assert low.model.head.layers[0].weight.dtype == torch.float32
    images, prompts = _images(2, 32, 32, seed=6), [Prompt(t) for t in PROMPTS[:2]]
    out = low.score(images, prompts)["imagereward"]
    full = _make(tiny_options).score(images, prompts)["imagereward"]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, full, atol=2e-2, rtol=0)


def test_differentiable_gradient_matches_finite_differences(tiny_options) -> None:
    diff = _make(tiny_options, differentiable=True)
    assert diff.is_differentiable() and ImageReward.differentiable
    image = _images(1, 32, 32, seed=7).mul(0.8).add(0.1).requires_grad_(True)
    prompt = [Prompt(PROMPTS[0])]
    (grad,) = torch.autograd.grad(diff.score(image, prompt)["imagereward"].sum(), image)
    direction = torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    h = 1e-3
    with torch.no_grad():
        up = diff.score(image + h * direction, prompt)["imagereward"]
        down = diff.score(image - h * direction, prompt)["imagereward"]
    numeric = ((up - down) / (2 * h)).item()
    analytic = (grad * direction).sum().item()
    assert abs(numeric - analytic) <= 1e-2 * abs(analytic) + 1e-4, (numeric, analytic)


def test_prompt_count_must_match(reward) -> None:
    with pytest.raises(ValueError, match="2 prompts for a batch of 3"):
        reward.score(_images(3, 32, 32), [Prompt("a"), Prompt("b")])
    empty = reward.score(torch.zeros(0, 3, 32, 32), [])["imagereward"]
    assert empty.shape == (0,) and empty.dtype == torch.float32


def test_defaults_follow_imagereward() -> None:
    config = ImageRewardConfig()
    assert config.model == "THUDM/ImageReward" and config.tokenizer == "bert-base-uncased"
    assert (config.max_length, config.differentiable) == (35, False)
    with pytest.raises(ConfigError):
        build(ImageRewardConfig, {"batch_size": 0})


def test_registered_through_entry_point(monkeypatch: pytest.MonkeyPatch, tiny_options) -> None:
    monkeypatch.setenv("DANCE_PLUGINS", "imagereward")
    registry = load_registry()
    assert registry.plugins["imagereward"].loaded, registry.plugins["imagereward"].error
    assert registry.get("reward", "imagereward") is ImageReward
    reward = registry.create("reward", "imagereward", {**tiny_options, "batch_size": 5}, Runtime())
    assert reward.config.batch_size == 5 and reward.components == ("imagereward",)


def test_settings_that_do_not_fit_the_checkpoint(tiny_options, tiny_imagereward, tmp_path):
    with pytest.raises(ConfigError, match="max_length 41 exceeds the text encoder's 40"):
        _make(tiny_options, max_length=41)
    vocab = (tiny_imagereward / "tokenizer" / "vocab.txt").read_text()
    (tmp_path / "vocab.txt").write_text(vocab + "zebra\ngiraffe\nokapi\n")
    rows = len(vocabulary()) + 2  # BERT's vocabulary, [DEC] and [ENC]
    with pytest.raises(ModelLayoutError, match=f"has {rows + 3} tokens, more than the {rows} "):
        _make(tiny_options, tokenizer=str(tmp_path))
