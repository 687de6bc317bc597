"""The released ImageReward.pt layout: every key used, none missing, at tiny and at full size;
the other forms a checkpoint may take; one clear error line for missing or wrong files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dance.config import build
from dance.errors import ModelLayoutError
from dance.interfaces import Prompt, Runtime
from dance_imagereward import ImageReward, ImageRewardConfig
from dance_imagereward.layout import (
    UNUSED_KEYS,
    map_state_dict,
    module_key,
    text_config,
    vision_config,
)
from dance_imagereward.model import ImageRewardModel, load_model
from dance_imagereward.tiny import RELEASED, med_config, released_shapes


def _check_bijection(released: dict[str, tuple[int, ...]], model: torch.nn.Module) -> None:
    """Every released key but the unused ones maps to a distinct model key of the same shape, and
    every model key is reached."""
    targets = {k: module_key(k) for k in released}
    unused = {k for k, t in targets.items() if t is None}
    assert unused == set(UNUSED_KEYS)
    mapped = [t for t in targets.values() if t is not None]
    assert len(mapped) == len(set(mapped)), "two released keys map to the same parameter"
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(mapped) == set(expected)
    for key, target in targets.items():
        if target is not None:
            assert tuple(released[key]) == expected[target], key


def test_every_released_key_is_used_at_tiny_size(tiny_imagereward: Path) -> None:
    state = torch.load(tiny_imagereward / "ImageReward.pt", weights_only=True)
    model = load_model(tiny_imagereward / "ImageReward.pt", tiny_imagereward / "med_config.json")
    _check_bijection({k: tuple(v.shape) for k, v in state.items()}, model)
    # The loaded weights are the released ones, tensor for tensor.
    loaded = model.state_dict()
    for key, value in state.items():
        target = module_key(key)
        if target is not None:
            assert torch.equal(loaded[target], value), key


def test_every_released_key_is_used_at_full_size() -> None:
    """ImageReward v1.0's own sizes (ViT-L/16 at 224 px, BERT-base with 30524 tokens), built on
    the meta device: no memory, no weights."""
    shapes = released_shapes(RELEASED, RELEASED.vocab_size)
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    mapped = map_state_dict(meta)
    vision = vision_config(mapped)
    text = text_config(med_config(RELEASED, RELEASED.vocab_size), vision.hidden_size)
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (
        1024,
        24,
        16,
    )
    assert (vision.image_size, vision.patch_size, vision.intermediate_size) == (224, 16, 4096)
    assert (text.hidden_size, text.encoder_hidden_size, text.num_attention_heads) == (768, 1024, 12)
    with torch.device("meta"):
        model = ImageRewardModel(vision, text)
    _check_bijection(shapes, model)
    assert model.head.layers[0].in_features == 768  # ImageReward's MLP(768)


def test_module_prefix_and_safetensors(tiny_imagereward: Path, tmp_path: Path, tiny_options):
    """A DDP-saved checkpoint (keys under ``module.``) converted to safetensors scores the same."""
    from safetensors.torch import save_file

    state = torch.load(tiny_imagereward / "ImageReward.pt", weights_only=True)
    save_file(
        {"module." + k: v.contiguous() for k, v in state.items()},
        tmp_path / "ImageReward.safetensors",
    )
    shutil.copy(tiny_imagereward / "med_config.json", tmp_path / "med_config.json")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = [Prompt("a red apple"), Prompt("a cat")]
    converted = ImageReward(
        build(ImageRewardConfig, {**tiny_options, "model": str(tmp_path)}), Runtime()
    )
    original = ImageReward(build(ImageRewardConfig, tiny_options), Runtime())
    torch.testing.assert_close(
        converted.score(images, prompts), original.score(images, prompts), atol=0, rtol=0
    )


def _reward(**options) -> ImageReward:
    return ImageReward(build(ImageRewardConfig, options), Runtime())


def test_missing_files_give_one_line_naming_the_option(tiny_imagereward: Path, tmp_path: Path):
    tokenizer = str(tiny_imagereward / "tokenizer")
    with pytest.raises(ModelLayoutError, match="option `model`.*huggingface.co/THUDM/ImageReward"):
        _reward(model=str(tmp_path / "nowhere"), tokenizer=tokenizer)
    with pytest.raises(ModelLayoutError, match="no ImageReward.pt in"):
        _reward(model=str(tmp_path), tokenizer=tokenizer)
    shutil.copy(tiny_imagereward / "ImageReward.pt", tmp_path / "ImageReward.pt")
    with pytest.raises(ModelLayoutError, match="option `med_config`") as err:
        _reward(model=str(tmp_path), tokenizer=tokenizer)
    assert "\n" not in str(err.value)
    with pytest.raises(ModelLayoutError, match="option `tokenizer`.*bert-base-uncased") as err:
        _reward(model=str(tiny_imagereward), tokenizer=str(tmp_path / "no-tokenizer"))
    assert "\n" not in str(err.value)


def test_wrong_checkpoints_are_reported(tiny_imagereward: Path, tmp_path: Path) -> None:
    options = {"tokenizer": str(tiny_imagereward / "tokenizer")}
    state = torch.load(tiny_imagereward / "ImageReward.pt", weights_only=True)
    med = json.loads((tiny_imagereward / "med_config.json").read_text())

    def write(name: str, tensors: dict, config: dict) -> str:
        directory = tmp_path / name
        directory.mkdir()
        torch.save(tensors, directory / "ImageReward.pt")
        (directory / "med_config.json").write_text(json.dumps(config))
        return str(directory)

    key = "blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"
    missing = write("missing", {k: v for k, v in state.items() if k != key}, med)
    with pytest.raises(ModelLayoutError, match="missing.*crossattention"):
        _reward(model=missing, **options)
    extra = write("extra", {**state, "blip.itm_head.weight": torch.zeros(2, 32)}, med)
    with pytest.raises(ModelLayoutError, match="unexpected key 'blip.itm_head.weight'"):
        _reward(model=extra, **options)
    heads = write("heads", state, {**med, "intermediate_size": 64})
    with pytest.raises(ModelLayoutError, match="intermediate.dense.weight' has shape"):
        _reward(model=heads, **options)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"model": object()}, pickled / "ImageReward.pt")
    with pytest.raises(ModelLayoutError, match="cannot read the ImageReward checkpoint"):
        _reward(model=str(pickled / "ImageReward.pt"), med_config=str(tiny_imagereward), **options)


def _fake_hub_cache(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """The Hugging Face cache layout: models--ORG--NAME/{refs/main, snapshots/REV/FILES}."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0123abcd")
    for name, source in files.items():
        shutil.copy(source, snapshot / name)


def test_files_are_found_in_the_hugging_face_cache(
    tiny_imagereward: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The defaults (THUDM/ImageReward, bert-base-uncased) resolve from the local cache alone."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    _fake_hub_cache(
        cache,
        "THUDM/ImageReward",
        {f: tiny_imagereward / f for f in ("ImageReward.pt", "med_config.json")},
    )
    # bert-base-uncased's repo holds vocab.txt (the tokenizer is rebuilt from it).
    _fake_hub_cache(
        cache, "bert-base-uncased", {"vocab.txt": tiny_imagereward / "tokenizer" / "vocab.txt"}
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    from_cache = _reward()
    local = _reward(model=str(tiny_imagereward), tokenizer=str(tiny_imagereward / "tokenizer"))
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prompts = [Prompt("A photo of a Cat!"), Prompt("two blue squares at the top")]
    torch.testing.assert_close(
        from_cache.score(images, prompts), local.score(images, prompts), atol=0, rtol=0
    )


def test_image_reward_download_directory_is_found(
    tiny_imagereward: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ImageReward.load`` keeps its files in ~/.cache/ImageReward; the default finds them."""
    import dance_imagereward.layout as layout

    legacy = tmp_path / "ImageReward"
    legacy.mkdir()
    for name in ("ImageReward.pt", "med_config.json"):
        shutil.copy(tiny_imagereward / name, legacy / name)
    monkeypatch.setattr(layout, "LEGACY_DIR", legacy)
    assert layout.find_checkpoint(layout.DEFAULT_REPO) == legacy / "ImageReward.pt"
    with pytest.raises(ModelLayoutError):  # only for the default repo
        layout.find_checkpoint("someone/ImageReward-finetune")


def test_tokenizer_directory_without_vocabulary_is_an_error(tiny_imagereward: Path, tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ModelLayoutError, match="has neither tokenizer.json nor vocab.txt"):
        _reward(model=str(tiny_imagereward), tokenizer=str(tmp_path))
