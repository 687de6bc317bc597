"""Qwen-Image in the GPU suite (benchmarks/gpu_suite.py): DanceGRPO's published setting,
full-size configs, tiny counterpart and the plain QwenImagePipeline to compare the rollout with.

The configs in ``bench_configs/`` are Qwen/Qwen-Image's diffusers config.json files, bookkeeping
keys (``_name_or_path``, library versions, dtype) left out (see ``_SOURCES``):

* ``transformer``: QwenImageTransformer2DModel, 60 blocks of 24 heads x 128, 3584-wide text
  input, 2x2 patches of 16 channels, rope axes (16, 56, 56): the class's defaults in diffusers,
  which are Qwen-Image's transformer/config.json (20.43 B parameters);
* ``vae``: AutoencoderKLQwenImage's defaults in diffusers (base width 96, widths x1 x2 x4 x4,
  16 latent channels and Qwen-Image's per-channel latent mean and std; 126.9 M parameters);
* ``text_encoder``: Qwen2.5-VL-7B-Instruct's config.json (Qwen2_5_VLForConditionalGeneration,
  the text model and the vision tower, 8.29 B parameters), whose sizes
  plugins/qwen-image/scripts/activation_memory.py also builds on the meta device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dance.models.bench_spec import BenchmarkSpec

CONFIGS = Path(__file__).parent / "bench_configs"
_SOURCES = {
    "transformer": "Qwen/Qwen-Image transformer/config.json = QwenImageTransformer2DModel's"
    " defaults in diffusers (num_layers 60, attention_head_dim 128, num_attention_heads 24,"
    " joint_attention_dim 3584, in_channels 64, out_channels 16, patch_size 2, axes_dims_rope"
    " [16, 56, 56]; the same sizes as plugins/qwen-image/scripts/activation_memory.py)",
    "vae": "Qwen/Qwen-Image vae/config.json = AutoencoderKLQwenImage's defaults in diffusers",
    "text_encoder": "Qwen/Qwen-Image text_encoder/config.json = Qwen/Qwen2.5-VL-7B-Instruct"
    " config.json (text model 28 layers of 3584, 28 heads, 4 key-value heads, vocabulary 152064;"
    " vision tower 32 blocks of 1280; the sizes of activation_memory.py's QWEN25_VL_7B)",
}
_FOLDERS = ("transformer", "vae", "text_encoder")


def _pipeline(policy: Any) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    return QwenImagePipeline(
        # The recipe's fixed shift 3 (DanceGRPO's sd3_time_shift), not the pipeline's dynamic
        # shift: the comparison is step for step, on the same schedule.
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=policy.vae,
        text_encoder=policy.text_encoder,
        tokenizer=policy.tokenizer,
        transformer=policy.transformer,
    )


def _pipeline_call(policy: Any, recipe: Any, prompts: list[Any]) -> dict[str, Any]:
    # Prompt embeddings from the policy, cut to the batch's longest prompt as the policy's
    # predict and the pipeline's own encode_prompt do.
    cond = policy.encode(prompts)
    mask = cond["prompt_embeds_mask"]  # [B, L]
    used = int(mask.sum(dim=1).max())
    return {
        "prompt_embeds": cond["prompt_embeds"][:, :used],
        "prompt_embeds_mask": mask[:, :used],
        # DanceGRPO's one conditional pass (the recipe's true_cfg_scale 1: no negative branch).
        "true_cfg_scale": policy.config.true_cfg_scale,
        "num_inference_steps": recipe.sampler_options.get("num_steps", 20),
        "height": policy.config.height,
        "width": policy.config.width,
        "max_sequence_length": policy.config.max_sequence_length,
    }


def _build_tiny(path: Path) -> Path:
    from dance_qwen_image.tiny import build_tiny_qwen_image

    return build_tiny_qwen_image(path)


def benchmark_spec() -> BenchmarkSpec:
    return BenchmarkSpec(
        policy="qwen-image",
        model="Qwen-Image",
        recipe="qwen-image",
        setting_source=(
            "DanceGRPO scripts/finetune/finetune_qwenimage_grpo.sh: 720x720, 20 steps, shift 3, "
            "eta 0.3, group 12, 2 prompts per GPU, timestep fraction 0.6 of 19 steps, one "
            "conditional pass (cfg 0), HPS-v2.1, gradient checkpointing; DanceGRPO trains the "
            "whole transformer under FSDP, the recipe (and so the suite) a LoRA of rank 128"
        ),
        configs={folder: CONFIGS / folder / "config.json" for folder in _FOLDERS},
        config_sources=_SOURCES,
        build_tiny=_build_tiny,
        overrides={"policy.lora_rank": 128, "policy.gradient_checkpointing": True},
        tiny_overrides={
            "policy.height": 32,
            "policy.width": 32,
            "policy.max_sequence_length": 16,
            "policy.lora_rank": 8,
            "policy.lora_alpha": 16.0,
        },
        prompts_per_gpu=2,  # --train_batch_size 2
        pipeline=_pipeline,
        pipeline_call=_pipeline_call,
        # A guess (no GPU run yet): building 20.4 B + 8.3 B parameters, a 60-block transformer
        # over 2025 image tokens (720x720), updates with every block recomputed.
        cost_estimate_s=110.0,
    )
