"""Finding and checking FLUX checkpoints: local directories, the HF cache, and every way to fail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dance.config import build
from dance.errors import ConfigError, ModelLayoutError, UsageError
from dance.interfaces import Runtime
from dance_flux.layout import check_layout, resolve_model
from dance_flux.policy import FluxConfig, FluxPolicy


@pytest.fixture
def copy_of(tiny_flux: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny checkpoint, to break."""
    return Path(shutil.copytree(tiny_flux, tmp_path / "model"))


def fake_hf_cache(tiny_flux: Path, cache: Path, repo_id: str) -> Path:
    """The Hugging Face cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return Path(shutil.copytree(tiny_flux, repo / "snapshots" / commit))


def test_tiny_checkpoint_is_in_the_real_layout(tiny_flux: Path) -> None:
    check_layout(tiny_flux)
    index = json.loads((tiny_flux / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    assert index["transformer"] == ["diffusers", "FluxTransformer2DModel"]
    assert (tiny_flux / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert resolve_model(str(tiny_flux)) == tiny_flux


def test_tiny_checkpoint_is_deterministic(tiny_flux: Path, tmp_path: Path) -> None:
    from dance_flux.tiny import build_tiny_flux

    again = build_tiny_flux(tmp_path / "again", seed=0)
    other = build_tiny_flux(tmp_path / "other", seed=1)
    for rel in ("transformer/diffusion_pytorch_model.safetensors", "tokenizer/tokenizer.json"):
        assert (again / rel).read_bytes() == (tiny_flux / rel).read_bytes(), rel
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert (other / weights).read_bytes() != (tiny_flux / weights).read_bytes()


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLayoutError, match="does not exist") as info:
        resolve_model(str(missing))
    assert str(missing) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "rel",
    [
        "model_index.json",
        "transformer/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "text_encoder_2/config.json",
        "scheduler/scheduler_config.json",
        "transformer/diffusion_pytorch_model.safetensors",
    ],
)
def test_missing_file_is_named(copy_of: Path, rel: str) -> None:
    (copy_of / rel).unlink()
    with pytest.raises(ModelLayoutError) as info:
        resolve_model(str(copy_of))
    message = str(info.value)
    assert rel in message and str(copy_of) in message
    assert "expected the diffusers FLUX layout" in message
    assert "\n" not in message


@pytest.mark.parametrize("folder", ["tokenizer", "tokenizer_2"])
def test_missing_tokenizer_folder_is_named(copy_of: Path, folder: str) -> None:
    shutil.rmtree(copy_of / folder)
    with pytest.raises(ModelLayoutError, match=f"has no {folder}/"):
        resolve_model(str(copy_of))


def test_missing_frozen_weights_are_named(copy_of: Path) -> None:
    (copy_of / "text_encoder_2" / "model.safetensors").unlink()
    with pytest.raises(ModelLayoutError, match="no weights in text_encoder_2/"):
        resolve_model(str(copy_of))


def test_sharded_transformer_needs_every_shard(copy_of: Path) -> None:
    weights = copy_of / "transformer" / "diffusion_pytorch_model.safetensors"
    shard = "diffusion_pytorch_model-00001-of-00002.safetensors"
    missing = "diffusion_pytorch_model-00002-of-00002.safetensors"
    weights.rename(weights.parent / shard)
    index = {"metadata": {}, "weight_map": {"a": shard, "b": missing}}
    (weights.parent / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps(index)
    )
    with pytest.raises(ModelLayoutError, match=f"transformer/{missing}"):
        resolve_model(str(copy_of))
    index["weight_map"] = {"a": shard}
    (weights.parent / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps(index)
    )
    assert resolve_model(str(copy_of)) == copy_of


def test_other_pipeline_is_refused(copy_of: Path) -> None:
    index = json.loads((copy_of / "model_index.json").read_text())
    index["transformer"] = ["diffusers", "SD3Transformer2DModel"]
    (copy_of / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLayoutError, match="not a FLUX checkpoint.*SD3Transformer2DModel"):
        resolve_model(str(copy_of))


def test_repo_id_not_in_cache(tmp_path: Path) -> None:
    with pytest.raises(ModelLayoutError) as info:
        resolve_model("black-forest-labs/FLUX.1-dev", cache_dir=tmp_path / "empty-cache")
    message = str(info.value)
    assert "black-forest-labs/FLUX.1-dev" in message
    assert "not in the Hugging Face cache" in message and "download it first" in message
    assert "local path" in message and "\n" not in message


def test_repo_id_found_in_cache(tiny_flux: Path, tmp_path: Path) -> None:
    snapshot = fake_hf_cache(tiny_flux, tmp_path / "hub", "tiny-org/tiny-flux")
    assert resolve_model("tiny-org/tiny-flux", cache_dir=tmp_path / "hub") == snapshot


def test_policy_loads_a_cached_repo_id(
    tiny_flux: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    snapshot = fake_hf_cache(tiny_flux, tmp_path / "hub", "tiny-org/tiny-flux")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    config = build(FluxConfig, {"model": "tiny-org/tiny-flux", "height": 32, "width": 32})
    policy = FluxPolicy(config, Runtime())
    assert policy.path == snapshot


def test_policy_reports_layout_errors(copy_of: Path) -> None:
    (copy_of / "vae" / "config.json").unlink()
    config = build(FluxConfig, {"model": str(copy_of), "height": 32, "width": 32})
    with pytest.raises(ModelLayoutError, match="vae/config.json"):
        FluxPolicy(config, Runtime())


def test_empty_model_asks_for_one() -> None:
    with pytest.raises(UsageError, match="--model") as info:
        FluxPolicy(build(FluxConfig, {}), Runtime())
    assert "policy.model" in str(info.value)


@pytest.mark.parametrize("field", ["height", "width"])
def test_size_must_be_a_multiple_of_16(field: str) -> None:
    with pytest.raises(ConfigError, match=f"{field} must be a multiple of 16"):
        build(FluxConfig, {"model": "x", field: 520})
    build(FluxConfig, {"model": "x", field: 512})


def test_config_ranges_and_choices() -> None:
    with pytest.raises(ConfigError, match="finetune"):
        build(FluxConfig, {"finetune": "dora"})
    with pytest.raises(ConfigError, match="max_sequence_length"):
        build(FluxConfig, {"max_sequence_length": 513})
    with pytest.raises(ConfigError, match="lora_targets"):
        build(FluxConfig, {"lora_targets": []})
    config = build(FluxConfig, {"lora_targets": "to_q, to_v"})
    assert config.lora_targets == ["to_q", "to_v"]


def test_defaults_follow_dancegrpo() -> None:
    config = FluxConfig()
    assert (config.height, config.width, config.guidance) == (720, 720, 3.5)
    assert (config.finetune, config.lora_rank, config.lora_alpha) == ("lora", 128, 256.0)
    assert config.lora_targets == ["to_q", "to_k", "to_v", "to_out.0"]
    assert config.max_sequence_length == 512 and config.cache_prompts


def test_registered_through_the_entry_point(tiny_flux: Path) -> None:
    from dance.registry import load_registry

    registry = load_registry()
    assert registry.get("policy", "flux") is FluxPolicy
    assert registry.plugins["flux"].distribution == "dance-flux"
    options = {"model": str(tiny_flux), "height": 32, "width": 32, "lora_rank": 2}
    policy = registry.create("policy", "flux", options, Runtime())
    assert isinstance(policy, FluxPolicy) and policy.config.lora_rank == 2


def test_tiny_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dance_flux.tiny import main

    main([str(tmp_path / "cli"), "--seed", "3"])
    check_layout(tmp_path / "cli")
    assert "wrote a tiny FLUX checkpoint" in capsys.readouterr().out
