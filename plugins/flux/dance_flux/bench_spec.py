"""FLUX.1-dev in the GPU suite (benchmarks/gpu_suite.py): published setting, full-size configs,
tiny counterpart and the plain FluxPipeline to compare the rollout with.

The configs in ``bench_configs/`` are FLUX.1-dev's diffusers config.json files (transformer, VAE,
CLIP-L and T5-XXL text encoders), written from the FLUX.1 family's published files; bookkeeping
keys (``_name_or_path``, library versions, dtype, a mirror's quantization block) are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dance.bench_spec import BenchmarkSpec

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


def _build_tiny(path: Path) -> Path:
    from dance_flux.tiny import build_tiny_flux

    return build_tiny_flux(path, num_layers=2, num_single_layers=2, width=64)


def benchmark_spec() -> BenchmarkSpec:
    return BenchmarkSpec(
        policy="flux",
        model="FLUX.1-dev",
        recipe="flux-hps",
        setting_source=(
            "DanceGRPO scripts/finetune/finetune_flux_grpo.sh: 720x720, 16 steps, shift 3, "
            "eta 0.3, group 12, timestep fraction 0.6, guidance 3.5; LoRA rank 128"
        ),
        configs={
            folder: CONFIGS / folder / "config.json"
            for folder in ("transformer", "vae", "text_encoder", "text_encoder_2")
        },
        config_sources={
            "transformer": _SOURCE.format("transformer", "; guidance_embeds true as in dev"),
            "vae": _SOURCE.format("vae", ""),
            "text_encoder": _SOURCE.format("text_encoder", "") + " = openai/clip-vit-large-patch14",
            "text_encoder_2": _SOURCE.format("text_encoder_2", "") + " = google/t5-v1_1-xxl",
        },
        build_tiny=_build_tiny,
        overrides={"policy.lora_rank": 128, "policy.gradient_checkpointing": True},
        tiny_overrides={
            "policy.height": 32,
            "policy.width": 32,
            "policy.max_sequence_length": 32,
            "policy.lora_rank": 8,
            "policy.lora_alpha": 16.0,
        },
        prompts_per_gpu=1,
        pipeline=_pipeline,
        pipeline_call=_pipeline_call,
        cost_estimate_s=70.0,
    )
