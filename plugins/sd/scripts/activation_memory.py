"""Estimate the memory of training Stable Diffusion 1.5 at 512x512, without weights or a GPU.

Builds SD 1.5's UNet, VAE and CLIP text encoder from their published configs on the meta device
(shapes only: no memory, no compute), counts their parameters, and runs one guided training forward
of the UNet (batch 2: unconditional + conditional, 64x64 latents, bf16) while recording every
tensor autograd saves for the backward pass. Attention is replaced by a stand-in that saves what a
fused (flash / memory-efficient) kernel keeps, q, k, v, the output and a log-sum-exp, never the
L x L matrix; weights saved by layers are not counted (they are already in the weight budget).

    python plugins/sd/scripts/activation_memory.py [--finetune lora|full] [--rank 4]
        [--gradient-checkpointing]

The result is an estimate: it leaves out the backward pass's transient buffers and the CUDA
allocator's fragmentation.
"""

from __future__ import annotations

import argparse

import torch

from dance.models.memory_estimate import GIB, count_parameters, saved_activation_bytes

# stable-diffusion-v1-5: unet/config.json, vae/config.json, text_encoder/config.json
UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
VAE = {
    "latent_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "sample_size": 512,
}
TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}


def main() -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextConfig, CLIPTextModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finetune", choices=("lora", "full"), default="lora")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()

    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET)
        vae = AutoencoderKL(**VAE)
        text = CLIPTextModel(CLIPTextConfig(**TEXT))
    print(
        f"parameters: unet {count_parameters(unet):,}  vae {count_parameters(vae):,}"
        f"  text encoder {count_parameters(text):,}"
    )

    unet.requires_grad_(args.finetune == "full")
    if args.finetune == "lora":
        targets = ["to_q", "to_k", "to_v", "to_out.0"]
        unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=targets))
        for name, param in unet.named_parameters():
            param.requires_grad_("lora_" in name)
    unet.to(torch.bfloat16).train()  # bf16 stands in for bf16 autocast
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    trainable = count_parameters(unet, trainable_only=True)
    print(f"trainable parameters: {trainable:,}")

    batch = 2  # one guided sample: [unconditional, conditional]
    latents = torch.empty(batch, 4, 64, 64, device="meta", dtype=torch.bfloat16)
    embeds = torch.empty(batch, 77, 768, device="meta", dtype=torch.bfloat16)
    timesteps = torch.full((batch,), 500, device="meta")
    activations = saved_activation_bytes(
        unet, lambda: unet(latents, timesteps, encoder_hidden_states=embeds)
    )
    print(f"activations saved for backward per guided sample: {activations / GIB:.2f} GiB")


if __name__ == "__main__":
    main()
