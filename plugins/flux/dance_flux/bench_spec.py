"""FLUX.1-dev and FLUX.1 Kontext [dev] in the GPU suite (benchmarks/gpu_suite.py): published
settings, full-size configs, tiny counterparts and the plain FluxPipeline and FluxKontextPipeline
to compare the rollout with.

The configs in ``bench_configs/`` are FLUX.1-dev's diffusers config.json files (transformer, VAE,
CLIP-L and T5-XXL text encoders), written from the FLUX.1 family's published files; bookkeeping
keys (``_name_or_path``, library versions, dtype, a mirror's quantization block) are left out.
FLUX.1 Kontext [dev] has FLUX.1-dev's networks (the same transformer architecture, VAE and text
encoders; only the weights and the source-image tokens differ), so its spec reuses these files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dance.models.bench_spec import BenchmarkSpec

CONFIGS = Path(__file__).parent / "bench_configs"
# FLUX.1-dev's repository is gated; the same config.json files (FLUX.1-schnell's, identical to
# dev's except guidance_embeds, which is true for dev) are readable in public mirrors.
_SOURCE = (
    "black-forest-labs/FLUX.1-dev {0}/config.json (read from the public mirror "
    "edkamesh/FluX-optimized of FLUX.1-schnell, quantization_config dropped{1})"
)


def _pipeline(policy: Any) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False),
        vae=policy.vae,
        text_encoder=policy.text_encoder,
        tokenizer=policy.tokenizer,
        text_encoder_2=policy.text_encoder_2,
        tokenizer_2=policy.tokenizer_2,
        transformer=policy.transformer,
    )


def _pipeline_call(policy: Any, recipe: Any, prompts: list[Any]) -> dict[str, Any]:
    # Prompt embeddings from the policy (dance's rollout reads them from its cache too).
    cond = policy.encode(prompts)
    return {
        "prompt_embeds": cond["prompt_embeds"],
        "pooled_prompt_embeds": cond["pooled_prompt_embeds"],
        "num_inference_steps": recipe.sampler_options.get("num_steps", 16),
        "height": policy.config.height,
        "width": policy.config.width,
        "guidance_scale": policy.config.guidance,
        "max_sequence_length": policy.config.max_sequence_length,
    }


def _kontext_pipeline(policy: Any) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline

    return FluxKontextPipeline(
        # FLUX.1-Kontext-dev's scheduler_config.json: shift by the token count; at the recipe's
        # 384x384 it gives the recipe's fixed shift 1.7405.
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=policy.vae,
        text_encoder=policy.text_encoder,
        tokenizer=policy.tokenizer,
        text_encoder_2=policy.text_encoder_2,
        tokenizer_2=policy.tokenizer_2,
        transformer=policy.transformer,
    )


def _kontext_call(policy: Any, recipe: Any, prompts: list[Any]) -> dict[str, Any]:
    import torch

    kwargs = _pipeline_call(policy, recipe, prompts)
    # The source images at the policy's working size (policy.image_size), in [0, 1]; the
    # pipeline keeps that size (_auto_resize off) and the output size (max_area = height x
    # width), then maps them to [-1, 1] and VAE-encodes them as the policy does.
    height, width = policy.working_size(prompts[0].image)
    images = [policy.image_processor.resize(p.image.float()[None], height, width) for p in prompts]
    kwargs["image"] = torch.cat(images)  # [B, 3, h, w]
    kwargs["max_area"] = policy.config.height * policy.config.width
    kwargs["_auto_resize"] = False
    return kwargs


def _build_tiny(path: Path) -> Path:
    from dance_flux.tiny import build_tiny_flux

    return build_tiny_flux(path, num_layers=2, num_single_layers=2, width=64)


def _build_tiny_kontext(path: Path) -> Path:
    from dance_flux.tiny import build_tiny_flux

    return build_tiny_flux(path, kontext=True, num_layers=2, num_single_layers=2, width=64)


def _configs() -> dict[str, Path]:
    return {
        folder: CONFIGS / folder / "config.json"
        for folder in ("transformer", "vae", "text_encoder", "text_encoder_2")
    }


def _sources() -> dict[str, str]:
    return {
        "transformer": _SOURCE.format("transformer", "; guidance_embeds true as in dev"),
        "vae": _SOURCE.format("vae", ""),
        "text_encoder": _SOURCE.format("text_encoder", "") + " = openai/clip-vit-large-patch14",
        "text_encoder_2": _SOURCE.format("text_encoder_2", "") + " = google/t5-v1_1-xxl",
    }


_TINY = {
    "policy.height": 32,
    "policy.width": 32,
    "policy.max_sequence_length": 32,
    "policy.lora_rank": 8,
    "policy.lora_alpha": 16.0,
}


def benchmark_spec() -> BenchmarkSpec:
    return BenchmarkSpec(
        policy="flux",
        model="FLUX.1-dev",
        recipe="flux-hps",
        setting_source=(
            "DanceGRPO scripts/finetune/finetune_flux_grpo.sh: 720x720, 16 steps, shift 3, "
            "eta 0.3, group 12, timestep fraction 0.6, guidance 3.5; LoRA rank 128"
        ),
        configs=_configs(),
        config_sources=_sources(),
        build_tiny=_build_tiny,
        overrides={"policy.lora_rank": 128, "policy.gradient_checkpointing": True},
        tiny_overrides=_TINY,
        prompts_per_gpu=1,
        pipeline=_pipeline,
        pipeline_call=_pipeline_call,
        cost_estimate_s=70.0,
    )


def kontext_benchmark_spec() -> BenchmarkSpec:
    kontext = (
        " (FLUX.1 Kontext [dev] has FLUX.1-dev's architecture: black-forest-labs/"
        "FLUX.1-Kontext-dev's file holds the same values, FLUX.1-dev's file reused)"
    )
    return BenchmarkSpec(
        policy="flux-kontext",
        model="FLUX.1 Kontext [dev]",
        recipe="flux-kontext",
        setting_source=(
            "Flow-Factory examples/grpo/lora/flux1_kontext/default.yaml: 384x384 output and "
            "source image, 10 steps, shift 1.7405 (the pipeline's dynamic shift at 576 tokens), "
            "Flow-SDE noise level 0.9 with one SDE (trained) step, embedded guidance 2.5, group "
            "16, 48 prompts per epoch (6 per GPU on its 8 GPUs), PickScore, LoRA rank 64, no "
            "gradient checkpointing (the published values, kept as published)"
        ),
        configs=_configs(),
        config_sources={
            folder: source + (kontext if folder in ("transformer", "vae") else "")
            for folder, source in _sources().items()
        },
        build_tiny=_build_tiny_kontext,
        # The published LoRA rank (64) and checkpointing (off) are Flow-Factory's own: kept.
        overrides={},
        tiny_overrides=_TINY,
        prompts_per_gpu=48 / 8,
        # Every prompt carries its source image (an edit), as the recipe's prompt file does.
        needs_image=True,
        pipeline=_kontext_pipeline,
        pipeline_call=_kontext_call,
        # A guess (no GPU run yet): FLUX.1-dev's build (11.9 B + 4.9 B parameters) and a
        # sequence of 576 noisy + 576 source-image + 512 text tokens, 96 images x 10 steps.
        cost_estimate_s=80.0,
    )
