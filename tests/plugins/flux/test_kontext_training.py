"""Training FLUX.1 Kontext: the saved LoRA loads into FluxKontextPipeline and reproduces the
trained policy, and `dance run` trains on an edit reward that reads the prompts' source images."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from kontext_helpers import SIZE, source_image

import dance
from dance.interfaces import Prompt, Reward, RewardOutput

PROMPT = "make the sky red"


def test_lora_loads_into_flux_kontext_pipeline(make_kontext, perturb, kontext_pipe, tmp_path):
    """FluxKontextPipeline.load_lora_weights of what save_trained wrote gives the trained
    policy's sampling: the same latents from the same seed and source image."""
    image = source_image(0, 32, 48)
    policy = make_kontext(image_size="source")
    perturb(policy, std=0.05)
    policy.save_trained(str(tmp_path / "lora"))
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()

    kwargs = dict(height=SIZE, width=SIZE, num_inference_steps=2, guidance_scale=2.5)
    kwargs.update(max_sequence_length=16, max_area=SIZE * SIZE, _auto_resize=False)

    def pipeline_latents() -> torch.Tensor:
        generator = torch.Generator().manual_seed(3)
        return kontext_pipe(
            image=image[None], prompt=PROMPT, generator=generator, output_type="latent", **kwargs
        ).images

    base = pipeline_latents()
    kontext_pipe.load_lora_weights(str(tmp_path / "lora"))
    trained = pipeline_latents()
    sigmas = kontext_pipe.scheduler.sigmas

    cond = policy.encode([Prompt(PROMPT, image)])
    x = policy.initial_noise(1, torch.Generator().manual_seed(3))
    with torch.no_grad():
        for k in range(len(sigmas) - 1):
            x = x + (sigmas[k + 1] - sigmas[k]) * policy.predict(x, sigmas[k : k + 1], cond)
    assert not torch.allclose(base, trained, atol=1e-4)  # the LoRA changes the model
    torch.testing.assert_close(x, trained, rtol=1e-5, atol=1e-5)


@dataclass
class SourceClosenessConfig:
    """No options."""


class SourceCloseness(Reward):
    """An edit reward for tests: minus the mean absolute difference between each image and its
    prompt's source image (resized to the image), so it needs prompts[i].image."""

    name = "test-source-closeness"
    config_class = SourceClosenessConfig
    modalities = ("image",)
    components = ("closeness",)
    seen_sources: list[tuple[int, ...]] = []

    def score(self, media: torch.Tensor, prompts: Sequence[Prompt]) -> RewardOutput:
        scores = []
        for image, prompt in zip(media, prompts, strict=True):
            assert prompt.image is not None, "the trainer must pass the source image through"
            type(self).seen_sources.append(tuple(prompt.image.shape))
            source = F.interpolate(prompt.image[None].float(), size=image.shape[-2:], mode="area")
            scores.append(-(image.float() - source[0]).abs().mean())
        return {"closeness": torch.stack(scores)}


class _EditRewardPlugin:
    @staticmethod
    @dance.hookimpl
    def register_rewards(register: Callable[[type], None]) -> None:
        register(SourceCloseness)


def test_dance_run_trains_on_an_edit_reward(tiny_kontext: Path, edit_prompt_file, tmp_path):
    """`dance run` for two iterations on a JSONL file of edits, scored against the source
    images: the reward receives every prompt's source image, unchanged (40x48, as written), in
    training and in the evaluation."""
    import dance.registry
    from dance.cli.app import main
    from dance.registry import load_registry

    out = tmp_path / "run"
    args = ["run", "--policy", "flux-kontext", "--reward", "test-source-closeness"]
    args += ["--model", str(tiny_kontext), "--output-dir", str(out), "--no-progress"]
    args += ["policy.height=32", "policy.width=32", "policy.max_sequence_length=16"]
    args += [
        "policy.lora_rank=4",
        "policy.image_size=output",
        f"trainer.prompts={edit_prompt_file}",
    ]
    args += ["trainer.iterations=2", "trainer.prompts_per_iteration=2", "trainer.group_size=2"]
    args += ["sampler.num_steps=2", "trainer.checkpoint_every=2"]
    # The evaluation scores the same edits before and after training.
    args += [f"evaluation.prompts={edit_prompt_file}", "evaluation.seeds=1"]
    args += ["evaluation.num_steps=2"]
    SourceCloseness.seen_sources.clear()
    dance.registry._REGISTRY = load_registry(extra={"test-edit-reward": _EditRewardPlugin()})
    try:
        with pytest.raises(SystemExit) as exc:
            main(args)
    finally:
        dance.registry.reset_registry()
    assert exc.value.code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    # 2 iterations x 2 prompts x 2 samples in training; 3 edits in each of two evaluations.
    assert len(SourceCloseness.seen_sources) == 2 * 2 * 2 + 2 * 3  # evaluations: before, after
    assert set(SourceCloseness.seen_sources) == {(3, 40, 48)}
    assert any((out / "checkpoints" / "iter-000002" / "trained").iterdir())
    rewards = [row["reward/test-source-closeness/mean"] for row in rows]
    assert all(-1.0 <= r < 0.0 for r in rewards)  # minus a mean absolute pixel difference


def test_recipe_shift_is_the_pipelines_at_its_resolution() -> None:
    """FluxKontextPipeline's dynamic shift at the recipe's size is exp(mu) of its token count
    (the scheduler's exponential time shift equals a static shift of exp(mu))."""
    import math

    from diffusers.pipelines.flux.pipeline_flux_kontext import calculate_shift

    from dance.cli.recipe import read_recipe

    raw = read_recipe("flux-kontext")
    tokens = (raw["policy"]["height"] // 16) * (raw["policy"]["width"] // 16)
    # FLUX.1-Kontext-dev's scheduler_config.json: 256 / 4096 tokens, shifts 0.5 / 1.15.
    mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
    assert raw["sampler"]["shift"] == pytest.approx(math.exp(mu), abs=1e-4)
