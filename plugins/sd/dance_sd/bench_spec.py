"""Stable Diffusion 1.5 in the GPU suite (benchmarks/gpu_suite.py): published setting, full-size
configs, tiny counterpart and the plain StableDiffusionPipeline to compare the rollout with.

The configs in ``bench_configs/`` are SD 1.5's diffusers config.json files (UNet, VAE, CLIP
ViT-L/14 text encoder) with bookkeeping keys left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dance.models.bench_spec import BenchmarkSpec

CONFIGS = Path(__file__).parent / "bench_configs"
_SOURCE = "stable-diffusion-v1-5/stable-diffusion-v1-5 (was runwayml/stable-diffusion-v1-5) {0}"


def _pipeline(policy: Any) -> Any:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=policy.vae,
        text_encoder=policy.text_encoder,
        tokenizer=policy.tokenizer,
        unet=policy.unet,
        scheduler=DDIMScheduler.from_pretrained(policy.path / "scheduler", local_files_only=True),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _pipeline_call(policy: Any, recipe: Any, prompts: list[Any]) -> dict[str, Any]:
    from dance.interfaces import Prompt

    embeds = policy.encode(prompts)["prompt_embeds"]
    # The empty prompt's embedding: the unconditional branch of dance's guidance, too.
    negative = policy.encode([Prompt("")])["prompt_embeds"].expand(len(prompts), -1, -1)
    return {
        "prompt_embeds": embeds,
        "negative_prompt_embeds": negative,
        "num_inference_steps": recipe.sampler_options.get("num_steps", 50),
        "eta": recipe.sampler_options.get("eta", 1.0),
        "height": policy.config.height,
        "width": policy.config.width,
        "guidance_scale": policy.config.guidance_scale,
    }


def _build_tiny(path: Path) -> Path:
    from dance_sd.tiny import build_tiny_sd

    return build_tiny_sd(path)


def benchmark_spec() -> BenchmarkSpec:
    return BenchmarkSpec(
        policy="sd",
        model="Stable Diffusion 1.5",
        recipe="sd-hps-clip",
        setting_source=(
            "DanceGRPO fastvideo/train_grpo_sd.py with config_sd/base.py and dgx.py (hpsv2): "
            "512x512, DDIM 50 steps, eta 1, CFG 5, group 16, 4 prompts per GPU, all steps but "
            "the last trained, full UNet fine-tune; gradient checkpointing on"
        ),
        configs={
            folder: CONFIGS / folder / "config.json" for folder in ("unet", "vae", "text_encoder")
        },
        config_sources={
            "unet": _SOURCE.format("unet/config.json"),
            "vae": _SOURCE.format("vae/config.json"),
            "text_encoder": _SOURCE.format("text_encoder/config.json")
            + " = openai/clip-vit-large-patch14 text tower",
        },
        build_tiny=_build_tiny,
        overrides={"policy.gradient_checkpointing": True},
        tiny_overrides={"policy.height": 32, "policy.width": 32},
        prompts_per_gpu=4,
        pipeline=_pipeline,
        pipeline_call=_pipeline_call,
        cost_estimate_s=60.0,
    )
