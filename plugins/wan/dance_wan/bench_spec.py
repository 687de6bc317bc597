"""Wan2.1 text-to-video (T2V-14B) and image-to-video (I2V-14B-480P) in the GPU suite
(benchmarks/gpu_suite.py): Flow-Factory's published settings, full-size configs, tiny
counterparts and the plain diffusers pipelines to compare the rollout with.

The configs in ``bench_configs/`` are written from these sources (bookkeeping keys left out):

* ``transformer`` and ``transformer_i2v``: the ``diffusers_config`` blocks of "Wan-T2V-14B" and
  "Wan-I2V-14B-480p" in diffusers' scripts/convert_wan_to_diffusers.py, the script that wrote
  Wan-AI/Wan2.1-T2V-14B-Diffusers and Wan-AI/Wan2.1-I2V-14B-480P-Diffusers (transformer/
  config.json); ``rope_max_seq_len`` is the class default the converted configs keep;
* ``vae``: AutoencoderKLWan's documented defaults in diffusers (the same script builds the Wan2.1
  VAE with ``AutoencoderKLWan()``, no arguments): base width 96, widths x1 x2 x4 x4, 16 latent
  channels, Wan2.1's per-channel latent mean and std;
* ``text_encoder``: google/umt5-xxl's config.json (the UMT5EncoderModel the Wan2.1 repositories
  ship as text_encoder/);
* ``image_encoder`` (I2V): the CLIP ViT-H/14 vision tower with projection of
  Wan-AI/Wan2.1-I2V-14B-480P-Diffusers image_encoder/config.json (open-clip
  xlm-roberta-large-vit-huge-14: 32 layers of width 1280, 224 px, patch 14), and its
  image_processor/preprocessor_config.json (CLIP's 224-pixel preprocessing,
  ``bench_configs/image_processor``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dance.models.bench_spec import BenchmarkSpec

CONFIGS = Path(__file__).parent / "bench_configs"
_CONVERTER = "diffusers scripts/convert_wan_to_diffusers.py get_transformer_config('{0}')"
_SOURCES = {
    "transformer": _CONVERTER.format("Wan-T2V-14B")
    + " = Wan-AI/Wan2.1-T2V-14B-Diffusers transformer/config.json",
    "vae": "AutoencoderKLWan defaults in diffusers (the converter builds Wan2.1's VAE with them)"
    " = Wan-AI/Wan2.1-T2V-14B-Diffusers vae/config.json",
    "text_encoder": "google/umt5-xxl config.json (UMT5EncoderModel)"
    " = Wan-AI/Wan2.1-T2V-14B-Diffusers text_encoder/config.json",
}
_I2V_SOURCES = {
    **_SOURCES,
    "transformer": _CONVERTER.format("Wan-I2V-14B-480p")
    + " = Wan-AI/Wan2.1-I2V-14B-480P-Diffusers transformer/config.json",
    "image_encoder": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers image_encoder/config.json (CLIP"
    " ViT-H/14 vision tower with projection, open-clip xlm-roberta-large-vit-huge-14)",
}
# The setting's own LoRA rank (64) and checkpointing (off) are Flow-Factory's: kept as published.
_TINY = {
    "policy.height": 32,
    "policy.width": 32,
    "policy.max_sequence_length": 16,
    "policy.lora_rank": 8,
    "policy.lora_alpha": 16.0,
}
# Flow-Factory's examples give 48 prompts x 16 samples per epoch but no GPU count; one node of
# 8 GPUs is assumed: 6 prompts (96 videos) per GPU. Samples per GPU-second do not depend on this
# assumption; seconds per iteration scale with it.
_PROMPTS_PER_GPU = 48 / 8


def _configs(transformer: str, *extra: str) -> dict[str, Path]:
    files = {f: CONFIGS / f / "config.json" for f in ("vae", "text_encoder", *extra)}
    return {"transformer": CONFIGS / transformer / "config.json", **files}


def _scheduler() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    # The recipes' shift 3 (480p); the Diffusers repositories ship UniPC with the same shift,
    # but the comparison is step for step, so the pipeline takes the Euler flow scheduler.
    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def _pipeline_t2v(policy: Any) -> Any:
    from diffusers import WanPipeline

    return WanPipeline(
        tokenizer=policy.tokenizer,
        text_encoder=policy.text_encoder,
        transformer=policy.transformer,
        vae=policy.vae,
        scheduler=_scheduler(),
    )


def _pipeline_i2v(policy: Any) -> Any:
    from diffusers import WanImageToVideoPipeline

    return WanImageToVideoPipeline(
        tokenizer=policy.tokenizer,
        text_encoder=policy.text_encoder,
        image_encoder=policy.image_encoder,
        image_processor=policy.image_processor,
        transformer=policy.transformer,
        vae=policy.vae,
        scheduler=_scheduler(),
    )


def _call_t2v(policy: Any, recipe: Any, prompts: list[Any]) -> dict[str, Any]:
    cond = policy.encode(prompts)
    negative = policy.negative_conditioning()
    return {
        "prompt_embeds": cond["prompt_embeds"],
        "negative_prompt_embeds": negative["prompt_embeds"].expand(len(prompts), -1, -1),
        "num_inference_steps": recipe.sampler_options.get("num_steps", 10),
        "height": policy.config.height,
        "width": policy.config.width,
        "num_frames": policy.config.num_frames,
        "guidance_scale": policy.config.cfg_scale,
        "max_sequence_length": policy.config.max_sequence_length,
    }


def _call_i2v(policy: Any, recipe: Any, prompts: list[Any]) -> dict[str, Any]:
    import torch

    kwargs = _call_t2v(policy, recipe, prompts)
    # The pipeline encodes the image itself (CLIP features and VAE condition latents), as
    # dance's policy does inside its encode.
    kwargs["image"] = torch.stack([p.image for p in prompts])  # [B, 3, H, W] in [0, 1]
    return kwargs


def _build_t2v(path: Path) -> Path:
    from dance_wan.tiny import build_tiny_wan

    return build_tiny_wan(path, kind="t2v")


def _build_i2v(path: Path) -> Path:
    from dance_wan.tiny import build_tiny_wan

    return build_tiny_wan(path, kind="i2v")


def wan_t2v_spec() -> BenchmarkSpec:
    return BenchmarkSpec(
        policy="wan-t2v",
        model="Wan2.1-T2V-14B",
        recipe="wan-t2v",
        setting_source=(
            "Flow-Factory examples/grpo/lora/wan21/t2v.yaml: 256x256x5 frames, 10 steps, shift "
            "3, Flow-SDE noise level 0.9 with one SDE (trained) step, true CFG 5, group 16, 48 "
            "prompts per epoch (6 per GPU on an assumed 8 GPUs), CLIP score + PickScore, LoRA "
            "rank 64, no gradient checkpointing"
        ),
        configs=_configs("transformer"),
        config_sources=_SOURCES,
        build_tiny=_build_t2v,
        overrides={},
        tiny_overrides=_TINY,
        prompts_per_gpu=_PROMPTS_PER_GPU,
        pipeline=_pipeline_t2v,
        pipeline_call=_call_t2v,
        # A guess (no GPU run yet): building 14.3 B + 5.7 B parameters, 96 videos x 10 steps of
        # a short sequence (2 x 16 x 16 = 512 tokens) with true CFG, 96 trained pairs.
        cost_estimate_s=90.0,
    )


def wan_i2v_spec() -> BenchmarkSpec:
    return BenchmarkSpec(
        policy="wan-i2v",
        model="Wan2.1-I2V-14B-480P",
        recipe="wan-i2v",
        setting_source=(
            "Flow-Factory examples/grpo/lora/wan21/i2v.yaml: 240x240x5 frames, 10 steps, shift "
            "3 (the T2V example's), Flow-SDE noise level 0.9 with one SDE (trained) step, true "
            "CFG 5, group 16, 48 prompts per epoch (6 per GPU on an assumed 8 GPUs), PickScore, "
            "LoRA rank 64, no gradient checkpointing"
        ),
        configs=_configs("transformer_i2v", "image_encoder"),
        config_sources=_I2V_SOURCES,
        build_tiny=_build_i2v,
        overrides={},
        tiny_overrides=_TINY,
        prompts_per_gpu=_PROMPTS_PER_GPU,
        needs_image=True,
        full_files={
            "image_processor/preprocessor_config.json": CONFIGS
            / "image_processor"
            / "preprocessor_config.json"
        },
        pipeline=_pipeline_i2v,
        pipeline_call=_call_i2v,
        # A guess (no GPU run yet): as wan-t2v with a 16.4 B transformer, the CLIP image encoder
        # and the image's VAE encoding per prompt.
        cost_estimate_s=100.0,
    )
