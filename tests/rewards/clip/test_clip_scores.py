"""Score formulas against independent computations with the loaded models; loading and errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dance.config import build
from dance.errors import ConfigError, ModelLayoutError
from dance.interfaces import Prompt, Runtime
from dance.video.frames import frame_indices
from dance_clip_rewards import tiny
from dance_clip_rewards.hps import HpsConfig, HpsReward

PROMPTS = ["a red apple on a table", "a cat", "a photo of a dog in the snow"]


def _uint8_images(n: int, height: int = 40, width: int = 52, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def _pixels(arrays: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arrays.copy()).permute(0, 3, 1, 2).float() / 255


def _prompts(texts: list[str]) -> list[Prompt]:
    return [Prompt(t) for t in texts]


def _open_clip_model(name: str, state: dict[str, torch.Tensor]):
    import open_clip

    model = open_clip.create_model(name, pretrained=None, pretrained_text=False)
    model.load_state_dict(state)
    return model.eval()


# -- formulas ---------------------------------------------------------------------------------


def test_hps_is_the_cosine_of_hps_features(clip_files, make_reward, hps_reference) -> None:
    """HPSv2's img_score: model(image, text) features (normalised), diagonal of image @ text.T,
    on images preprocessed with HPS's transform; no logit scale."""
    import open_clip

    arrays = _uint8_images(3)
    ours = make_reward("hps").score(_pixels(arrays), _prompts(PROMPTS))["hps"]
    state = torch.load(clip_files.hps, weights_only=True)["state_dict"]
    model = _open_clip_model(tiny.TINY_H14, state)
    images = torch.stack([hps_reference(Image.fromarray(a), tiny.IMAGE_SIZE) for a in arrays])
    tokens = open_clip.get_tokenizer(tiny.TINY_H14)(PROMPTS)
    with torch.no_grad():
        out = model(images, tokens)
    image_features, text_features = out[0], out[1]  # (normalised image, normalised text, scale)
    expected = torch.diagonal(image_features @ text_features.T)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert ours.abs().max() <= 1.0


@pytest.mark.parametrize("scale, floor", [(1.0, False), (2.5, True), (100.0, True)])
def test_clip_score_scalings(clip_files, make_reward, scale: float, floor: bool) -> None:
    import open_clip

    arrays = _uint8_images(3, seed=1)
    reward = make_reward("clip-score", scale=scale, floor_at_zero=floor)
    ours = reward.score(_pixels(arrays), _prompts(PROMPTS))["clip_score"]
    state = torch.load(clip_files.hps, weights_only=True)["state_dict"]
    model = _open_clip_model(tiny.TINY_H14, state)
    _, _, transform = open_clip.create_model_and_transforms(tiny.TINY_H14, pretrained=None)
    images = torch.stack([transform(Image.fromarray(a)) for a in arrays])
    with torch.no_grad():
        image_features = F.normalize(model.encode_image(images), dim=-1)
        tokens = open_clip.get_tokenizer(tiny.TINY_H14)(PROMPTS)
        text_features = F.normalize(model.encode_text(tokens), dim=-1)
    cosine = (image_features * text_features).sum(-1)
    expected = scale * (cosine.clamp(min=0) if floor else cosine)
    # The reference preprocesses PIL images: the features move by the resampling difference.
    torch.testing.assert_close(ours, expected, atol=2e-3 * scale, rtol=0)


def test_pickscore_follows_pickscore_definition(clip_files, make_reward) -> None:
    """PickScore's README computation: processor on PIL images and padded text, features
    normalised, logit_scale.exp() * text @ image.T, diagonal."""
    from transformers import CLIPModel, CLIPProcessor

    arrays = _uint8_images(3, seed=2)
    ours = make_reward("pickscore").score(_pixels(arrays), _prompts(PROMPTS))["pickscore"]
    processor = CLIPProcessor.from_pretrained(clip_files.pickscore_processor, local_files_only=True)
    model = CLIPModel.from_pretrained(clip_files.pickscore_model, local_files_only=True).eval()
    image_inputs = processor(images=[Image.fromarray(a) for a in arrays], return_tensors="pt")
    text_inputs = processor(
        text=PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt"
    )
    with torch.no_grad():
        image_embs = model.get_image_features(**image_inputs)
        text_embs = model.get_text_features(**text_inputs)
    image_embs = getattr(image_embs, "pooler_output", image_embs)
    text_embs = getattr(text_embs, "pooler_output", text_embs)
    image_embs = image_embs / image_embs.norm(dim=-1, keepdim=True)
    text_embs = text_embs / text_embs.norm(dim=-1, keepdim=True)
    expected = torch.diagonal(model.logit_scale.exp() * text_embs @ image_embs.T)
    scale = model.logit_scale.exp().item()
    torch.testing.assert_close(ours, expected, atol=2e-3 * scale, rtol=0)


def test_pickscore_tokenizer_is_clips(clip_files) -> None:
    """The tiny processor's tokenizer (rebuilt from open_clip's merges) tokenises as open_clip."""
    import open_clip
    from transformers import CLIPProcessor

    processor = CLIPProcessor.from_pretrained(clip_files.pickscore_processor, local_files_only=True)
    ours = processor.tokenizer(PROMPTS, padding="max_length", max_length=77)["input_ids"]
    reference = open_clip.get_tokenizer(tiny.TINY_H14)(PROMPTS)
    for row, ref in zip(ours, reference, strict=True):
        n = int((ref != 0).sum())
        assert row[:n] == ref[:n].tolist()


def test_aesthetic_is_the_mlp_on_the_normalised_embedding(clip_files, make_reward) -> None:
    """The predictor's inference: CLIP encode_image, L2-normalise, MLP head in fp32."""
    import open_clip
    from safetensors.torch import load_file

    arrays = _uint8_images(3, seed=3)
    ours = make_reward("laion-aesthetic").score(_pixels(arrays), _prompts(PROMPTS))["aesthetic"]
    model = _open_clip_model(tiny.TINY_L14, load_file(str(clip_files.open_clip_l14)))
    _, _, transform = open_clip.create_model_and_transforms(tiny.TINY_L14, pretrained=None)
    head = torch.nn.Sequential(
        torch.nn.Linear(24, 1024),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(1024, 128),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 64),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(64, 16),
        torch.nn.Linear(16, 1),
    )
    state = torch.load(clip_files.aesthetic_head, weights_only=True)
    head.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()})
    head.eval()
    with torch.no_grad():
        features = model.encode_image(torch.stack([transform(Image.fromarray(a)) for a in arrays]))
        embeddings = features.numpy() / np.linalg.norm(features.numpy(), axis=-1, keepdims=True)
        expected = head(torch.from_numpy(embeddings)).squeeze(-1)
    torch.testing.assert_close(ours, expected, atol=2e-3, rtol=0)


def test_quick_gelu_comes_from_the_pretrained_tag() -> None:
    """OpenAI weights need QuickGELU, which the state dict cannot say: the tag sets it."""
    from dance_clip_rewards.openclip import pretrained_config

    assert pretrained_config("ViT-L-14", "openai")["quick_gelu"] is True
    assert pretrained_config("ViT-H-14-378-quickgelu", "dfn5b")["resize_mode"] == "squash"
    with pytest.raises(ConfigError, match="no pretrained tag 'nope'"):
        pretrained_config("ViT-L-14", "nope")
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        pretrained_config("ViT-L-15", "")


# -- media handling ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hps", "pickscore"])
def test_video_is_the_mean_over_sampled_frames(make_reward, name: str) -> None:
    reward = make_reward(name, video_frames=3)
    video = torch.rand(2, 3, 7, 30, 40, generator=torch.Generator().manual_seed(0))
    prompts = _prompts(PROMPTS[:2])
    scores = reward.score(video, prompts)[reward.components[0]]
    index = frame_indices(7, 3)
    for b in range(2):
        frames = video[b].index_select(1, index).transpose(0, 1)
        alone = reward.score(frames, [prompts[b]] * 3)[reward.components[0]]
        torch.testing.assert_close(scores[b], alone.mean(), atol=1e-5, rtol=0)


def test_non_finite_pixels_give_nan_for_that_sample_only(make_reward) -> None:
    reward = make_reward("hps")
    images = torch.rand(3, 3, 30, 40, generator=torch.Generator().manual_seed(1))
    clean = reward.score(images, _prompts(PROMPTS))["hps"]
    broken = images.clone()
    broken[1, 0, 5, 5] = float("nan")
    broken[2, 2, 0, 0] = float("inf")
    out = reward.score(broken, _prompts(PROMPTS))["hps"]
    assert torch.isnan(out[1:]).all()
    torch.testing.assert_close(out[0], clean[0], atol=1e-6, rtol=0)
    video = torch.rand(1, 3, 4, 30, 40)
    video[0, :, 3] = float("nan")  # the last frame is always sampled
    assert torch.isnan(reward.score(video, _prompts(PROMPTS[:1]))["hps"]).all()


def test_bf16_frozen_weights_give_fp32_scores_close_to_fp32(clip_files, make_reward) -> None:
    images = torch.rand(3, 3, 30, 40, generator=torch.Generator().manual_seed(2))
    for name in ("hps", "pickscore"):
        fp32 = make_reward(name)
        cls, config = type(fp32), fp32.config
        bf16 = cls(config, Runtime(frozen_dtype=torch.bfloat16))
        key = fp32.components[0]
        low = bf16.score(images, _prompts(PROMPTS))[key]
        assert low.dtype == torch.float32
        high = fp32.score(images, _prompts(PROMPTS))[key]
        scale = high.abs().max().item()
        torch.testing.assert_close(low, high, atol=0.05 * max(scale, 1.0), rtol=0)
        if name == "pickscore":  # read in fp32 before the cast, not rounded to bf16
            assert bf16.logit_scale == fp32.logit_scale
            assert bf16.model.logit_scale.dtype == torch.bfloat16


# -- loading ----------------------------------------------------------------------------------


class _Payload:
    """Unpickling this would create a file: proof that arbitrary code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_weights_only_refuses_pickled_objects(clip_files, tmp_path: Path) -> None:
    state = torch.load(clip_files.hps, weights_only=True)["state_dict"]
    marker = tmp_path / "code-ran"
    evil = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": state, "extra": _Payload(marker)}, evil)
    with pytest.raises(ModelLayoutError, match=r"weights_only=True") as exc:
        HpsReward(build(HpsConfig, {"checkpoint": str(evil), "model": tiny.TINY_H14}), Runtime())
    assert not marker.exists()
    assert "\n" not in str(exc.value)
    with pytest.raises(pickle.UnpicklingError):  # the file is really a malicious-style pickle
        torch.load(evil, weights_only=True)


def test_missing_hps_checkpoint_says_where_to_get_it(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    with pytest.raises(ModelLayoutError) as exc:
        HpsReward(build(HpsConfig, {"checkpoint": str(tmp_path / "nope.pt")}), Runtime())
    message = str(exc.value)
    assert "nope.pt" in message and "huggingface.co/xswu/HPSv2" in message
    assert "rewards.hps.checkpoint=PATH" in message and "\n" not in message

    # No path: the Hugging Face cache and ~/.cache/hpsv2 are searched, and named when empty.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(ModelLayoutError, match=r"xswu/HPSv2.*in the Hugging Face cache"):
        HpsReward(build(HpsConfig, {"model": tiny.TINY_H14}), Runtime())


def test_hps_checkpoint_is_found_in_the_hf_cache(clip_files, tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--xswu--HPSv2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "HPS_v2.1_compressed.pt").write_bytes(clip_files.hps.read_bytes())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    reward = HpsReward(build(HpsConfig, {"model": tiny.TINY_H14}), Runtime())
    images = torch.rand(1, 3, 28, 28)
    expected = HpsReward(
        build(HpsConfig, {"model": tiny.TINY_H14, "checkpoint": str(clip_files.hps)}), Runtime()
    ).score(images, _prompts(PROMPTS[:1]))
    assert torch.equal(reward.score(images, _prompts(PROMPTS[:1]))["hps"], expected["hps"])


def test_wrong_architecture_is_a_layout_error(clip_files) -> None:
    with pytest.raises(ModelLayoutError, match="does not match the model architecture"):
        HpsReward(
            build(HpsConfig, {"checkpoint": str(clip_files.hps), "model": tiny.TINY_L14}),
            Runtime(),
        )


def test_missing_pickscore_and_aesthetic_files(make_reward, tmp_path: Path) -> None:
    with pytest.raises(ModelLayoutError, match=r"PickScore weights .*rewards\.pickscore\.model"):
        make_reward("pickscore", model=str(tmp_path / "no-such-dir"))
    with pytest.raises(ModelLayoutError, match=r"improved-aesthetic-predictor.*\.head=PATH"):
        make_reward("laion-aesthetic", head=str(tmp_path / "head.pth"))
    wrong = tmp_path / "head.pth"
    tiny.write_aesthetic_head(wrong, input_size=16)
    with pytest.raises(ModelLayoutError, match="takes 16-dim embeddings"):
        make_reward("laion-aesthetic", head=str(wrong))


# Writing the legacy archive and torch.load's notice about it warn; the archive is the point here.
@pytest.mark.filterwarnings("ignore:.*torch.jit:FutureWarning", "ignore:.*TorchScript:UserWarning")
def test_torchscript_archives_are_refused_with_a_hint(tmp_path: Path) -> None:
    """OpenAI's original ViT-L-14.pt is TorchScript: point users at the open_clip-format file."""
    from dance_clip_rewards.weights import load_state_dict

    archive = tmp_path / "ViT-L-14.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(archive))
    with pytest.raises(ModelLayoutError, match=r"weights_only=True.*safetensors"):
        load_state_dict(archive, "CLIP weights")
