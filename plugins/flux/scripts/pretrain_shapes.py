"""Pretrain `bundled:shapes`, the tiny text-to-image model `dance run` trains by default.

    python plugins/flux/scripts/pretrain_shapes.py --out plugins/flux/dance_flux/bundled/shapes

Reproducible from ``--seed`` on a 2-core CPU in under 30 minutes. The model is a real FLUX
checkpoint in the diffusers layout, only small: random frozen tiny CLIP and T5 text encoders with
the tiny tokenizers of `dance.testing.tiny_tokenizers`, an AutoencoderKL trained here on the
scenes, and a FluxTransformer2DModel trained by flow matching (Lipman et al. 2023; Esser et al.
2024's rectified flow: x_s = (1 - s) x0 + s eps, target velocity eps - x0, which is what FLUX
predicts) on scenes of coloured shapes described by prompts ("two blue squares on the left"),
rendered procedurally by `dance_shapes.scenes`. It is good but not perfect, so GRPO has something
to improve: 40% of its training captions name a wrong colour (``--caption-noise``), the way web
alt-text misdescribes images, so it draws the shapes, counts and positions asked for but follows
colour words only about 60% of the time.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SIZE = 64
MAX_SEQUENCE_LENGTH = 16  # the longest grammar prompt is 9 T5 tokens + </s>
SHIFT = 3.0


def build_modules(seed: int) -> dict:
    from dance.testing.tiny_tokenizers import clip_tokenizer, t5_tokenizer
    from dance.testing.tiny_vae import tiny_autoencoder_kl
    from dance_flux.tiny import tiny_flux_transformer, tiny_text_encoders

    # FluxPipeline's components by name.
    parts = {"tokenizer": clip_tokenizer(), "tokenizer_2": t5_tokenizer()}
    torch.manual_seed(seed)
    parts["text_encoder"], parts["text_encoder_2"] = tiny_text_encoders(
        parts["tokenizer"], parts["tokenizer_2"]
    )
    parts["vae"] = tiny_autoencoder_kl(
        (16, 32, 32), norm_num_groups=8, sample_size=SIZE, quant_convs=False
    )
    # 4 latent channels x 2x2 packing; no guidance embedding (trained without guidance).
    parts["transformer"] = tiny_flux_transformer(
        num_layers=2,
        num_single_layers=2,
        width=128,
        num_attention_heads=4,
        guidance_embeds=False,
        axes_dims_rope=(8, 12, 12),
    )
    return parts


def render_dataset(
    count: int, seed: int, caption_noise: float = 0.0
) -> tuple[torch.Tensor, list[str]]:
    """``count`` random scenes: images ``[n, 3, H, W]`` in [-1, 1] and their captions.

    With probability ``caption_noise`` a caption names another colour (drawn uniformly) than the
    one drawn, as web alt-text often misdescribes its image: the model then follows colour words
    only part of the time, which is the flaw GRPO against the `shapes` reward has to fix.
    """
    from dance_shapes.scenes import COLORS, SceneSpec, random_spec, render_tensor

    rng = random.Random(seed)
    specs = [random_spec(rng) for _ in range(count)]
    images = torch.stack(
        [render_tensor(s, SIZE, seed * 1_000_003 + i) for i, s in enumerate(specs)]
    )
    noise_rng = random.Random(f"caption-noise|{seed}")
    captions = []
    for spec in specs:
        if noise_rng.random() < caption_noise:
            wrong = noise_rng.choice([c for c in COLORS if c != spec.color])
            spec = SceneSpec(spec.count, wrong, spec.shape, spec.position)
        captions.append(spec.prompt)
    return images * 2 - 1, captions


def schedule_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(vae, images: torch.Tensor, steps: int, batch: int, seed: int) -> None:  # noqa: ANN001
    from dance_shapes.scenes import BACKGROUND

    background = torch.tensor(BACKGROUND).view(1, 3, 1, 1) / 255 * 2 - 1
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    vae.train()
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 2e-3 * schedule_lr(step, steps, 50)
        x = images[torch.randint(0, len(images), (batch,), generator=g)]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        recon = vae.decode(z).sample
        # Shapes cover a few percent of the image: weight their pixels up, or the autoencoder
        # learns the background and blurs similar colours (green and blue) into one.
        weight = 1 + 9 * ((x - background).abs().amax(dim=1, keepdim=True) > 0.1).float()
        # A small KL keeps the latent space smooth enough to sample from; reconstruction dominates.
        loss = (weight * (recon - x) ** 2).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(
                f"vae {step:5d}/{steps} loss {loss.item():.5f} {time.perf_counter() - start:.0f}s"
            )
    vae.eval()


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    return torch.cat(
        [vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)]
    )


def train_transformer(
    transformer,
    latents,
    prompts,
    embeds,
    steps: int,
    batch: int,
    seed: int,  # noqa: ANN001
) -> None:
    from diffusers import FluxPipeline

    g = torch.Generator().manual_seed(seed)
    n, c, h, w = latents.shape
    packed = FluxPipeline._pack_latents(latents, n, c, h, w)  # [n, h/2 * w/2, 4c]
    img_ids = FluxPipeline._prepare_latent_image_ids(n, h // 2, w // 2, "cpu", torch.float32)
    txt_ids = torch.zeros(MAX_SEQUENCE_LENGTH, 3)
    index = {p: i for i, p in enumerate(sorted(set(prompts)))}
    prompt_idx = torch.tensor([index[p] for p in prompts])
    t5 = torch.cat([embeds[p][0] for p in sorted(index)])  # [P, L, D]
    pooled = torch.cat([embeds[p][1] for p in sorted(index)])  # [P, D]
    opt = torch.optim.AdamW(transformer.parameters(), lr=1e-3, weight_decay=1e-4)
    transformer.train()
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 1e-3 * schedule_lr(step, steps, 100)
        idx = torch.randint(0, n, (batch,), generator=g)
        x0 = packed[idx]
        eps = torch.randn(x0.shape, generator=g)
        u = torch.rand(batch, generator=g)
        sigma = SHIFT * u / (1 + (SHIFT - 1) * u)  # the sampler's shifted schedule, as density
        s = sigma.view(batch, 1, 1)
        xt = (1 - s) * x0 + s * eps
        p = prompt_idx[idx]
        v = transformer(
            hidden_states=xt,
            timestep=sigma,
            guidance=None,
            pooled_projections=pooled[p],
            encoder_hidden_states=t5[p],
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        loss = F.mse_loss(v, eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(
                f"flow {step:5d}/{steps} loss {loss.item():.4f} {time.perf_counter() - start:.0f}s"
            )
    transformer.eval()


def evaluate(path: Path, seeds: int) -> dict[str, float]:
    """Sample every grammar prompt with the deterministic sampler and score it with the shapes
    reward, through dance's own policy and sampler code."""
    import dance
    from dance.registry import get_registry
    from dance.sampling.generate import generate
    from dance_shapes.scenes import all_specs

    registry = get_registry()
    runtime = dance.Runtime()
    policy = registry.create(
        "policy",
        "flux",
        {"model": str(path), "height": SIZE, "width": SIZE, "max_sequence_length": 16},
        runtime,
    )
    sampler = registry.create("sampler", "ode", {"num_steps": 16, "shift": SHIFT}, runtime)
    reward = registry.create("reward", "shapes", {}, runtime)
    prompts = [dance.Prompt(s.prompt) for s in all_specs() for _ in range(seeds)]
    media = generate(policy, sampler, prompts, list(range(len(prompts))), batch_size=32)
    scores = reward.score(media, prompts)
    return {k: v.mean().item() for k, v in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=16000)
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=5500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eval-seeds", type=int, default=2)
    parser.add_argument(
        "--caption-noise",
        type=float,
        default=0.4,
        help="fraction of training captions that name a wrong colour (the flaw GRPO fixes)",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()

    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    parts = build_modules(args.seed)
    vae, transformer = parts["vae"], parts["transformer"]
    images, prompts = render_dataset(args.images, args.seed, args.caption_noise)
    print(f"rendered {len(images)} scenes in {time.perf_counter() - start:.0f}s")

    train_vae(vae, images, args.vae_steps, 32, args.seed + 1)
    latents = encode_latents(vae, images)
    # FLUX's VAE normalisation: z' = (z - shift_factor) * scaling_factor, unit variance.
    shift, scale = latents.mean().item(), 1.0 / latents.std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    latents = (latents - shift) * scale

    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT, use_dynamic_shifting=False)
    pipe = FluxPipeline(scheduler=scheduler, **parts)
    embeds = {}
    with torch.no_grad():
        for p in sorted(set(prompts)):
            e, pooled, _ = pipe.encode_prompt(
                prompt=p, prompt_2=None, max_sequence_length=MAX_SEQUENCE_LENGTH
            )
            embeds[p] = (e, pooled)
    train_transformer(transformer, latents, prompts, embeds, args.steps, args.batch, args.seed + 2)

    args.out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(args.out, safe_serialization=True)
    minutes = (time.perf_counter() - start) / 60
    metrics = evaluate(args.out, args.eval_seeds) if args.eval_seeds else {}
    info = {"seed": args.seed, "args": {k: str(v) for k, v in vars(args).items()}}
    info.update({"train_minutes": round(minutes, 1), "eval_ode_16_steps": metrics})
    (args.out / "pretraining.json").write_text(json.dumps(info, indent=2) + "\n")
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file()) / 1e6
    print(f"wrote {args.out} ({size:.1f} MB) in {minutes:.1f} min; evaluation: {metrics}")


if __name__ == "__main__":
    main()
