"""Finding and checking HunyuanVideo-family checkpoints, and every way loading them fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hunyuan_helpers import SMALL

from dance.config import build
from dance.errors import ConfigError, ModelLayoutError, UsageError
from dance.interfaces import Runtime
from dance_hunyuan_video import (
    HunyuanVideoConfig,
    HunyuanVideoPolicy,
    SkyReelsI2VConfig,
    SkyReelsI2VPolicy,
)
from dance_hunyuan_video.layout import check_layout, resolve_model


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.fixture
def copy_of(tiny_hunyuan: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny text-to-video checkpoint, to break."""
    return Path(shutil.copytree(tiny_hunyuan, tmp_path / "model"))


def test_tiny_checkpoints_are_in_the_real_layouts(tiny_hunyuan: Path, tiny_skyreels: Path) -> None:
    for path, pipeline, in_channels in (
        (tiny_hunyuan, "HunyuanVideoPipeline", 4),
        (tiny_skyreels, "HunyuanSkyreelsImageToVideoPipeline", 8),
    ):
        check_layout(path)
        index = json.loads((path / "model_index.json").read_text())
        assert index["_class_name"] == pipeline
        assert index["tokenizer"] == ["transformers", "LlamaTokenizerFast"]
        assert index["transformer"] == ["diffusers", "HunyuanVideoTransformer3DModel"]
        config = json.loads((path / "transformer" / "config.json").read_text())
        assert (config["in_channels"], config["out_channels"]) == (in_channels, 4)
        assert resolve_model(str(path)) == path


def test_tiny_checkpoint_is_deterministic(tiny_hunyuan: Path, tmp_path: Path) -> None:
    from dance_hunyuan_video.tiny import main

    main([str(tmp_path / "again")])
    for rel in ("transformer/diffusion_pytorch_model.safetensors", "tokenizer/tokenizer.json"):
        assert (tmp_path / "again" / rel).read_bytes() == (tiny_hunyuan / rel).read_bytes(), rel


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("model_index.json", "model_index.json"),
        ("vae/config.json", "vae/config.json"),
        ("tokenizer", "tokenizer/"),
        ("text_encoder/model.safetensors", "text_encoder/"),
        ("transformer/diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors"),
    ],
)
def test_missing_pieces_are_named(copy_of: Path, remove: str, named: str) -> None:
    target = copy_of / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ModelLayoutError) as info:
        resolve_model(str(copy_of))
    assert named in one_line(info) and str(copy_of) in str(info.value)


def test_other_checkpoints_are_refused(copy_of: Path, tmp_path: Path) -> None:
    index_file = copy_of / "model_index.json"
    index = json.loads(index_file.read_text())
    index["text_encoder"] = ["transformers", "LlavaForConditionalGeneration"]
    index_file.write_text(json.dumps(index))
    with pytest.raises(ModelLayoutError, match="LlavaForConditionalGeneration"):
        resolve_model(str(copy_of))
    with pytest.raises(ModelLayoutError, match="does not exist"):
        resolve_model(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLayoutError, match="not in the Hugging Face cache") as info:
        resolve_model("nobody/no-such-model-here")
    assert "hf download nobody/no-such-model-here" in one_line(info)


def test_repo_id_found_in_the_hugging_face_cache(
    tiny_hunyuan: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "hub" / "models--org--tiny-hunyuan"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = Path(shutil.copytree(tiny_hunyuan, repo / "snapshots" / commit))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model("org/tiny-hunyuan") == snapshot


def test_each_policy_refuses_the_others_transformer(tiny_hunyuan, tiny_skyreels) -> None:
    t2v = build(HunyuanVideoConfig, {"model": str(tiny_skyreels), **SMALL}, prefix="policy.")
    with pytest.raises(ModelLayoutError, match="skyreels-i2v") as info:
        HunyuanVideoPolicy(t2v, Runtime())
    one_line(info)
    i2v = build(SkyReelsI2VConfig, {"model": str(tiny_hunyuan), **SMALL}, prefix="policy.")
    with pytest.raises(ModelLayoutError, match="policy.transformer=Skywork") as info:
        SkyReelsI2VPolicy(i2v, Runtime())
    one_line(info)


def test_transformer_from_another_folder(tiny_hunyuan, tiny_skyreels, tmp_path) -> None:
    """SkyReels' layout in practice: HunyuanVideo's checkpoint plus SkyReels' transformer repo."""
    base = Path(shutil.copytree(tiny_hunyuan, tmp_path / "base"))
    shutil.rmtree(base / "transformer")
    values = {"model": str(base), "transformer": str(tiny_skyreels / "transformer"), **SMALL}
    policy = SkyReelsI2VPolicy(build(SkyReelsI2VConfig, values, prefix="policy."), Runtime())
    assert policy.transformer.config.in_channels == 8
    values["transformer"] = str(tmp_path / "missing")
    with pytest.raises(ModelLayoutError, match="does not exist"):
        SkyReelsI2VPolicy(build(SkyReelsI2VConfig, values, prefix="policy."), Runtime())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_frames": 10}, "4k\\+1.*nearest: 9"),
        ({"height": 40}, "multiple of 16"),
        ({"prompt_template": "no placeholder"}, "'{}'"),
        ({"lora_targets": []}, "lora_targets is empty"),
        ({"lora_targets": ["no_such_module"]}, "match no HunyuanVideo"),
        ({"finetune": "half"}, "finetune must be one of"),
    ],
)
def test_config_errors_are_one_line(make_t2v, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        make_t2v(**overrides)
    one_line(info)


def test_missing_model_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="needs a model"):
        HunyuanVideoPolicy(HunyuanVideoConfig(), Runtime())


def test_paper_defaults() -> None:
    t2v, i2v = HunyuanVideoConfig(), SkyReelsI2VConfig()
    assert (t2v.height, t2v.width, t2v.num_frames, t2v.guidance) == (480, 480, 53, 6.0)
    assert (i2v.height, i2v.width, i2v.num_frames, i2v.guidance, i2v.cfg_scale) == (
        400,
        640,
        53,
        1.0,
        5.0,
    )
