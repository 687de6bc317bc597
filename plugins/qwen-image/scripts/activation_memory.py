"""Estimate the memory of training Qwen-Image at 720x720, without weights or a GPU.

Builds Qwen-Image's transformer (QwenImageTransformer2DModel's defaults are Qwen/Qwen-Image's
transformer/config.json), its VAE (AutoencoderKLQwenImage's defaults) and the Qwen2.5-VL-7B text
encoder (its text and vision sizes, below) on the meta device (shapes only: no memory, no compute),
counts their parameters, and runs one training forward of the transformer (bf16, LoRA on the joint
attention's projections) for one sample, recording every tensor autograd saves for the backward
pass. Attention is replaced by a stand-in that saves what a fused (flash / memory-efficient)
kernel keeps, q, k, v, the output and a log-sum-exp, never the L x L matrix; weights saved by
layers are not counted (they are in the weight budget).

    python plugins/qwen-image/scripts/activation_memory.py [--size 720] [--text-tokens 128]
        [--finetune lora|full] [--rank 128] [--gradient-checkpointing]

The result is an estimate: it leaves out the backward pass's transient buffers and the CUDA
allocator's fragmentation.
"""

from __future__ import annotations

import argparse

import torch

from dance.diffusers_policy.config import JOINT_ATTENTION_LORA_TARGETS
from dance.models.memory_estimate import GIB, count_parameters, saved_activation_bytes

TARGETS = list(JOINT_ATTENTION_LORA_TARGETS)  # the policy's default LoRA targets


# Qwen/Qwen-Image text_encoder/config.json (Qwen2.5-VL-7B-Instruct): its text model and vision
# tower.
QWEN25_VL_7B = {
    "text_config": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
    },
}


def main() -> None:
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from peft import LoraConfig
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=720)
    parser.add_argument("--text-tokens", type=int, default=128)
    parser.add_argument("--finetune", choices=("lora", "full"), default="lora")
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()

    with torch.device("meta"):
        transformer = QwenImageTransformer2DModel()
        vae = AutoencoderKLQwenImage()
        text = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**QWEN25_VL_7B))
    print(
        f"parameters: transformer {count_parameters(transformer):,}  vae {count_parameters(vae):,}"
        f"  text encoder {count_parameters(text):,}"
    )
    transformer.requires_grad_(args.finetune == "full")
    if args.finetune == "lora":
        config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=TARGETS)
        transformer.add_adapter(config)
        for name, param in transformer.named_parameters():
            param.requires_grad_("lora_" in name)
    transformer.to(torch.bfloat16).train()  # bf16 stands in for bf16 autocast
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    trainable = count_parameters(transformer, trainable_only=True)
    print(f"trainable parameters: {trainable:,}")

    grid = args.size // 16  # VAE factor 8 x 2x2 packing
    latents = torch.empty(1, grid * grid, 64, device="meta", dtype=torch.bfloat16)
    embeds = torch.empty(1, args.text_tokens, 3584, device="meta", dtype=torch.bfloat16)
    activations = saved_activation_bytes(
        transformer,
        lambda: transformer(
            hidden_states=latents,
            encoder_hidden_states=embeds,
            timestep=torch.full((1,), 0.5, device="meta"),
            img_shapes=[[(1, grid, grid)]],
        ),
    )
    print(
        f"activations saved for backward per sample ({grid * grid} image + {args.text_tokens}"
        f" text tokens): {activations / GIB:.2f} GiB"
    )


if __name__ == "__main__":
    main()
