"""HunyuanVideo (text-to-video) and SkyReels-V1 (image-to-video) in the GPU suite
(benchmarks/gpu_suite.py): published settings, full-size configs, tiny counterparts and the plain
diffusers pipelines to compare the rollout with.

The configs in ``bench_configs/`` are hunyuanvideo-community/HunyuanVideo's diffusers config.json
files (transformer, VAE, Llama 3 8B text encoder of llava-llama-3-8b, CLIP-L text encoder) and the
SkyReels-V1-Hunyuan-I2V transformer's (HunyuanVideo's with 32 input channels: the noisy and the
image latents), bookkeeping keys left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dance.models.bench_spec import BenchmarkSpec

CONFIGS = Path(__file__).parent / "bench_configs"
_COMMUNITY = "hunyuanvideo-community/HunyuanVideo {0}/config.json"
_SOURCES = {
    "transformer": _COMMUNITY.format("transformer"),
    "vae": _COMMUNITY.format("vae"),
    "text_encoder": _COMMUNITY.format("text_encoder") + " (LlamaModel of xtuner/llava-llama-3-8b)",
    "text_encoder_2": _COMMUNITY.format("text_encoder_2") + " = openai/clip-vit-large-patch14",
}
_TINY = {"policy.height": 32, "policy.width": 32, "policy.num_frames": 9, "policy.lora_rank": 8}
_FULL = {"policy.lora_rank": 128, "policy.gradient_checkpointing": True}


def _configs(transformer: str) -> dict[str, Path]:
    files = {f: CONFIGS / f / "config.json" for f in ("vae", "text_encoder", "text_encoder_2")}
    return {"transformer": CONFIGS / transformer / "config.json", **files}


def _pipeline_t2v(policy: Any) -> Any:
    from diffusers import HunyuanVideoPipeline

    return HunyuanVideoPipeline(**_parts(policy))


def _pipeline_i2v(policy: Any) -> Any:
    from diffusers import HunyuanSkyreelsImageToVideoPipeline

    return HunyuanSkyreelsImageToVideoPipeline(**_parts(policy))


def _parts(policy: Any) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return {
        "text_encoder": policy.text_encoder,
        "tokenizer": policy.tokenizer,
        "transformer": policy.transformer,
        "vae": policy.vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0),
        "text_encoder_2": policy.text_encoder_2,
        "tokenizer_2": policy.tokenizer_2,
    }


def _call_t2v(policy: Any, recipe: Any, prompts: list[Any]) -> dict[str, Any]:
    cond = policy.encode(prompts)
    return {
        "prompt_embeds": cond["prompt_embeds"],
        "prompt_attention_mask": cond["prompt_attention_mask"],
        "pooled_prompt_embeds": cond["pooled_prompt_embeds"],
        "num_inference_steps": recipe.sampler_options.get("num_steps", 16),
        "height": policy.config.height,
        "width": policy.config.width,
        "num_frames": policy.config.num_frames,
        "guidance_scale": policy.config.guidance,
    }


def _call_i2v(policy: Any, recipe: Any, prompts: list[Any]) -> dict[str, Any]:
    import torch

    negative = policy.negative_conditioning()
    kwargs = _call_t2v(policy, recipe, prompts)
    batch = len(prompts)
    kwargs.update(
        image=torch.stack([p.image for p in prompts]),
        negative_prompt_embeds=negative["prompt_embeds"].expand(batch, -1, -1),
        negative_prompt_attention_mask=negative["prompt_attention_mask"].expand(batch, -1),
        negative_pooled_prompt_embeds=negative["pooled_prompt_embeds"].expand(batch, -1),
        true_cfg_scale=policy.config.cfg_scale,
    )
    return kwargs


def _build_t2v(path: Path) -> Path:
    from dance_hunyuan_video.tiny import build_tiny_hunyuan

    return build_tiny_hunyuan(path)


def _build_i2v(path: Path) -> Path:
    from dance_hunyuan_video.tiny import build_tiny_hunyuan

    return build_tiny_hunyuan(path, i2v=True)


def hunyuan_video_spec() -> BenchmarkSpec:
    return BenchmarkSpec(
        policy="hunyuan-video",
        model="HunyuanVideo",
        recipe="hunyuan-video",
        setting_source=(
            "DanceGRPO scripts/finetune/finetune_hunyuan_grpo.sh: 480x480x53 frames, 16 steps, "
            "shift 5, eta 0.25, group 24 with Best-of-N 8, timestep fraction 0.6, embedded "
            "guidance 6; LoRA rank 128"
        ),
        configs=_configs("transformer"),
        config_sources=_SOURCES,
        build_tiny=_build_t2v,
        overrides=_FULL,
        tiny_overrides=_TINY,
        pipeline=_pipeline_t2v,
        pipeline_call=_call_t2v,
        cost_estimate_s=170.0,
    )


def skyreels_i2v_spec() -> BenchmarkSpec:
    sources = dict(_SOURCES)
    sources["transformer"] = (
        "Skywork/SkyReels-V1-Hunyuan-I2V config.json (HunyuanVideo's transformer, in_channels 32)"
    )
    return BenchmarkSpec(
        policy="skyreels-i2v",
        model="SkyReels-V1 I2V",
        recipe="skyreels-i2v",
        setting_source=(
            "DanceGRPO scripts/finetune/finetune_skyreels_i2v.sh: 400x640x53 frames, 16 steps, "
            "shift 7, eta 0.3, group 8, true CFG 5, timestep fraction 0.6; LoRA rank 128"
        ),
        configs=_configs("transformer_i2v"),
        config_sources=sources,
        build_tiny=_build_i2v,
        overrides=_FULL,
        tiny_overrides=_TINY,
        needs_image=True,
        pipeline=_pipeline_i2v,
        pipeline_call=_call_i2v,
        cost_estimate_s=230.0,
    )
