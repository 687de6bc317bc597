"""GRPO end to end on the tiny FLUX checkpoint: ratio layouts, the CLI, the LoRA in diffusers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dance
from dance.cli.app import main
from dance.cli.recipe import MOVED_TO_OBJECTIVE, resolve
from dance.registry import get_registry, reset_registry
from dance.training.trainer import Trainer

SMALL = {"height": 32, "width": 32, "max_sequence_length": 16, "lora_rank": 4, "lora_alpha": 8.0}


def flux_trainer(tiny_flux, tmp_path, **trainer):
    raw = {
        "policy": {"name": "flux", "model": str(tiny_flux), **SMALL},
        "sampler": {"name": "dance-sde", "num_steps": 4},
        "rewards": [{"name": "jpeg-compressibility"}],
        # GRPO's own settings go to [objective]
        "objective": {k: trainer.pop(k) for k in MOVED_TO_OBJECTIVE if k in trainer},
        "trainer": {"prompts_per_iteration": 2, "group_size": 3, **trainer},
    }
    reset_registry()
    return Trainer(resolve(raw, get_registry()), tmp_path, dance.Runtime(), get_registry())


@pytest.mark.parametrize("rollout_batch, micro_batch", [(1, 1), (4, 3), (6, 12), (5, 7)])
def test_flux_ratio_is_one_before_the_first_step(tiny_flux, tmp_path, rollout_batch, micro_batch):
    trainer = flux_trainer(
        tiny_flux,
        tmp_path,
        rollout_batch_size=rollout_batch,
        micro_batch_size=micro_batch,
        old_log_probs="rollout",
        learning_rate=1e-3,
    )
    metrics = trainer.iteration(0)
    assert metrics["ratio/first_step_max_dev"] < 1e-5
    assert metrics["optimizer_steps"] == 1


def cli(args, capsys):
    reset_registry()
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    return out


def test_cli_run_lora_loads_into_diffusers_and_samples(tiny_flux, tmp_path, capsys):
    from diffusers import FluxPipeline

    run_dir = tmp_path / "run"
    overrides = [f"policy.{k}={v}" for k, v in SMALL.items()]
    cli(
        ["run", "--policy", "flux", "--model", str(tiny_flux), "--reward", "jpeg-compressibility"]
        + ["--output-dir", str(run_dir), "--no-progress", *overrides]
        + ["trainer.iterations=2", "trainer.group_size=2", "trainer.prompts_per_iteration=2"]
        + ["sampler.num_steps=3", "trainer.learning_rate=1e-2", "trainer.sample_every=1"],
        capsys,
    )
    lora = run_dir / "checkpoints" / "iter-000002" / "trained"
    assert (lora / "pytorch_lora_weights.safetensors").is_file()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run_dir / "samples" / "iter-000001.png").is_file()

    # The trained LoRA in diffusers gives what the trained policy gives.
    reset_registry()
    registry = get_registry()
    policy = registry.create("policy", "flux", {"model": str(tiny_flux), **SMALL}, dance.Runtime())
    policy.load_trained(str(lora))
    pipe = FluxPipeline.from_pretrained(str(tiny_flux), local_files_only=True)
    pipe.load_lora_weights(str(lora))
    gen = torch.Generator().manual_seed(0)
    latents = policy.initial_noise(1, gen)
    cond = policy.encode([dance.Prompt("a red apple")])
    t = torch.tensor([0.7])
    ours = policy.predict(latents, t, cond)
    with torch.no_grad():
        theirs = pipe.transformer(
            hidden_states=latents,
            timestep=t,
            guidance=torch.full((1,), 3.5),
            pooled_projections=cond["pooled_prompt_embeds"],
            encoder_hidden_states=cond["prompt_embeds"],
            txt_ids=torch.zeros(cond["prompt_embeds"].shape[1], 3),
            img_ids=FluxPipeline._prepare_latent_image_ids(
                1, 16 // 2, 16 // 2, "cpu", torch.float32
            ),
            return_dict=False,
        )[0]
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-5)
    base = registry.create("policy", "flux", {"model": str(tiny_flux), **SMALL}, dance.Runtime())
    assert not torch.allclose(base.predict(latents, t, cond), ours, atol=1e-5)

    # dance sample with the run's LoRA (policy settings come from the run's config.toml)
    out = cli(
        ["sample", "--lora", str(run_dir), "--prompt", "a red apple", "--num-per-prompt", "2"]
        + ["--output-dir", str(tmp_path / "samples"), "sampler.num_steps=3"],
        capsys,
    )
    assert "wrote 2 images" in out
    manifest = json.loads((tmp_path / "samples" / "samples.json").read_text())
    assert manifest["policy_options"]["height"] == 32 and len(manifest["images"]) == 2

    # Best-of-N with the trained LoRA
    out = cli(
        ["sample", "--lora", str(run_dir), "--prompt", "a red apple", "--best-of", "3"]
        + ["--reward", "jpeg-compressibility", "--output-dir", str(tmp_path / "best")]
        + ["sampler.num_steps=3"],
        capsys,
    )
    report = json.loads((tmp_path / "best" / "best_of_n.json").read_text())
    assert report["trained"] == str(run_dir) and len(report["prompts"][0]["candidates"]) == 3


FIXTURE = Path(__file__).parents[2] / "fixtures" / "example_plugin"


def test_third_party_plugin_is_discovered_and_used(tiny_flux, tmp_path):
    """pip-install a plugin kept in the tests' files into a temporary location and train with it."""
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
        + ["--no-build-isolation", "--target", str(site), str(FIXTURE)],
        check=True,
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    listing = subprocess.run(
        [sys.executable, "-m", "dance.cli", "plugins", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["example"]["loaded"] and rows["example"]["version"] == "0.3.0"
    assert rows["example"]["registers"] == [{"kind": "reward", "name": "brightness"}]
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "dance.cli", "run", "--policy", "flux", "--model", str(tiny_flux)]
        + ["--reward", "brightness", "rewards.brightness.target=0.2", "--no-progress"]
        + ["--output-dir", str(run_dir)]
        + [f"policy.{k}={v}" for k, v in SMALL.items()]
        + ["trainer.iterations=1", "trainer.group_size=2", "trainer.prompts_per_iteration=1"]
        + ["sampler.num_steps=3"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert "reward/brightness/mean" in metrics and "component/brightness.distance/mean" in metrics
