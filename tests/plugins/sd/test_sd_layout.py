"""Finding and checking SD 1.x checkpoints: local directories, the HF cache, and how each fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dance.config import build
from dance.errors import ModelLayoutError
from dance.interfaces import Runtime
from dance_sd.layout import check_layout, resolve_model
from dance_sd.policy import SDConfig, SDPolicy


@pytest.fixture
def broken(tiny_sd: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny checkpoint, to break."""
    return Path(shutil.copytree(tiny_sd, tmp_path / "model"))


def hf_cache_with(tiny_sd: Path, cache: Path, repo_id: str) -> Path:
    """The Hugging Face hub cache layout: models--org--name/refs/main and snapshots/<commit>/."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "f" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return Path(shutil.copytree(tiny_sd, repo / "snapshots" / commit))


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def one_line_error(path_or_id: str) -> str:
    with pytest.raises(ModelLayoutError) as info:
        resolve_model(path_or_id)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_tiny_checkpoint_has_the_sd_layout(tiny_sd: Path) -> None:
    index = json.loads((tiny_sd / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert index["safety_checker"] == [None, None]
    for rel in ("tokenizer/vocab.json", "tokenizer/merges.txt", "unet/config.json"):
        assert (tiny_sd / rel).is_file(), rel
    assert not (tiny_sd / "tokenizer" / "tokenizer.json").exists()
    scheduler = json.loads((tiny_sd / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "PNDMScheduler" and scheduler["clip_sample"] is False
    assert resolve_model(str(tiny_sd)) == tiny_sd


def test_tiny_checkpoint_depends_only_on_the_seed(tiny_sd: Path, tmp_path: Path) -> None:
    from dance_sd.tiny import build_tiny_sd

    same = build_tiny_sd(tmp_path / "same", seed=0)
    other = build_tiny_sd(tmp_path / "other", seed=1)
    weights = "unet/diffusion_pytorch_model.safetensors"
    for rel in (weights, "tokenizer/vocab.json", "tokenizer/merges.txt"):
        assert (same / rel).read_bytes() == (tiny_sd / rel).read_bytes(), rel
    assert (other / weights).read_bytes() != (tiny_sd / weights).read_bytes()


@pytest.mark.parametrize(
    "rel",
    [
        "model_index.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "scheduler/scheduler_config.json",
        "tokenizer/merges.txt",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ],
)
def test_missing_file_is_named(broken: Path, rel: str) -> None:
    (broken / rel).unlink()
    message = one_line_error(str(broken))
    assert rel in message and str(broken) in message and "expected the diffusers" in message


def test_safety_checker_may_be_absent_from_the_index(broken: Path) -> None:
    index = json.loads((broken / "model_index.json").read_text())
    del index["safety_checker"], index["feature_extractor"]
    (broken / "model_index.json").write_text(json.dumps(index))
    assert resolve_model(str(broken)) == broken


def test_half_precision_variant_alone_is_named(broken: Path) -> None:
    unet = broken / "unet"
    (unet / "diffusion_pytorch_model.safetensors").rename(
        unet / "diffusion_pytorch_model.fp16.safetensors"
    )
    message = one_line_error(str(broken))
    assert "found only diffusion_pytorch_model.fp16.safetensors" in message


def test_pickled_weights_are_accepted(broken: Path) -> None:
    encoder = broken / "text_encoder"
    (encoder / "model.safetensors").rename(encoder / "pytorch_model.bin")
    check_layout(broken)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("model_index.json", {"unet": ["diffusers", "SD3Transformer2DModel"]}), "unet class"),
        (("model_index.json", {"text_encoder_2": ["transformers", "CLIPTextModel"]}), "XL"),
        (("scheduler/scheduler_config.json", {"prediction_type": "v_prediction"}), "predicts"),
        (("unet/config.json", {"in_channels": 9}), "inpainting"),
    ],
)
def test_other_models_are_refused_by_name(broken: Path, edit, message: str) -> None:
    rel, changes = edit
    edit_json(broken / rel, **changes)
    assert message in one_line_error(str(broken))


def test_missing_directory_and_file_paths(tmp_path: Path) -> None:
    assert "does not exist" in one_line_error(str(tmp_path / "nowhere"))
    (tmp_path / "file").write_text("")
    assert "is a file, not a directory" in one_line_error(str(tmp_path / "file"))


def test_repo_id_not_in_the_cache(tmp_path: Path) -> None:
    with pytest.raises(ModelLayoutError) as info:
        resolve_model("stable-diffusion-v1-5/stable-diffusion-v1-5", cache_dir=tmp_path / "hub")
    message = str(info.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "not in the Hugging Face cache" in message and "hf download" in message


def test_policy_loads_a_cached_repo_id(
    tiny_sd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    snapshot = hf_cache_with(tiny_sd, tmp_path / "hub", "tiny-org/tiny-sd")
    assert resolve_model("tiny-org/tiny-sd", cache_dir=tmp_path / "hub") == snapshot
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    policy = SDPolicy(build(SDConfig, {"model": "tiny-org/tiny-sd", "height": 32}), Runtime())
    assert policy.path == snapshot


def test_defaults_follow_sd_and_dancegrpo() -> None:
    config = SDConfig()
    assert (config.height, config.width, config.guidance_scale) == (512, 512, 5.0)
    assert (config.finetune, config.lora_rank, config.lora_alpha) == ("lora", 4, 4.0)
    assert config.lora_targets == ["to_q", "to_k", "to_v", "to_out.0"]
    assert config.cache_prompts and not config.offload_frozen


def test_registered_through_the_entry_point(tiny_sd: Path) -> None:
    from dance.registry import load_registry

    registry = load_registry()
    assert registry.get("policy", "sd") is SDPolicy
    assert registry.plugins["sd"].distribution == "dance-sd"
    assert registry.plugins["ddim"].distribution == "dance-ddim-sampler"
    policy = registry.create("policy", "sd", {"model": str(tiny_sd), "height": 32}, Runtime())
    assert isinstance(policy, SDPolicy) and policy.latent_shape == (4, 16, 256)


def test_tiny_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dance_sd.tiny import main

    main([str(tmp_path / "cli"), "--seed", "2"])
    check_layout(tmp_path / "cli")
    assert "wrote a tiny Stable Diffusion checkpoint" in capsys.readouterr().out
