"""The SD policy computes what diffusers' StableDiffusionPipeline computes from the same inputs."""

from __future__ import annotations

import pytest
import torch

from dance.errors import ConfigError, UsageError
from dance.interfaces import Prompt, Runtime
from dance.sampling.generate import denoise
from dance_ddim_sampler import DDIMConfig, DDIMSampler

PROMPTS = ["a red cat on the left", "two blue squares"]
SIZE = 32  # the make_policy fixture's height and width


def test_encode_matches_the_pipeline(make_policy, pipe):
    policy = make_policy()
    cond = policy.encode([Prompt(t) for t in PROMPTS])
    embeds, negative = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    assert cond["prompt_embeds"].shape == (2, 77, 32)
    torch.testing.assert_close(cond["prompt_embeds"], embeds, atol=0, rtol=0)
    # The unconditional embedding is the pipeline's negative embedding for no negative prompt.
    torch.testing.assert_close(policy._uncond.expand(2, -1, -1), negative, atol=0, rtol=0)


def test_predict_is_the_unet_with_classifier_free_guidance(make_policy, pipe):
    """[uncond, cond] in one UNet batch, then eps_u + 5 (eps_c - eps_u), at per-sample timesteps."""
    policy = make_policy()
    assert policy.config.guidance_scale == 5.0
    x = policy.initial_noise(2, torch.Generator().manual_seed(0))
    t = torch.tensor([981, 41])  # a different discrete timestep per sample
    with torch.no_grad():
        got = policy.predict(x, t, policy.encode([Prompt(p) for p in PROMPTS]))
        embeds, negative = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
        eps = pipe.unet(
            torch.cat([x, x]),
            torch.cat([t, t]),
            encoder_hidden_states=torch.cat([negative, embeds]),
        ).sample
    eps_uncond, eps_cond = eps.chunk(2)
    expected = eps_uncond + 5.0 * (eps_cond - eps_uncond)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, eps_cond, atol=1e-3)  # guidance changed something


def test_guidance_scale_one_is_a_single_conditional_pass(make_policy, pipe):
    policy = make_policy(guidance_scale=1.0)
    x = policy.initial_noise(1, torch.Generator().manual_seed(1))
    t = torch.tensor([501])
    calls = []
    policy.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        got = policy.predict(x, t, policy.encode([Prompt(PROMPTS[0])]))
        embeds, _ = pipe.encode_prompt(PROMPTS[:1], "cpu", 1, False)
        expected = pipe.unet(x, t, encoder_hidden_states=embeds).sample
    assert calls == [1]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_ddim_sampling_and_decode_reproduce_the_pipeline(make_policy, pipe):
    """eta = 0 DDIM with the policy and the ddim sampler, decoded, is the pipeline's image."""
    steps = 4
    policy = make_policy()
    sampler = DDIMSampler(DDIMConfig(num_steps=steps, eta=0.0), Runtime())
    prompts = [Prompt(t) for t in PROMPTS]
    noise = policy.initial_noise(2, torch.Generator().manual_seed(3))
    policy.train(False)
    with torch.no_grad():
        x = noise
        schedule = sampler.schedule()
        for out in denoise(
            policy, sampler, schedule, x, policy.encode(prompts), deterministic=True
        ):
            x = out.next_latents
        images = policy.decode(x)
    expected = pipe(
        PROMPTS,
        height=SIZE,
        width=SIZE,
        latents=noise.clone(),
        guidance_scale=5.0,
        num_inference_steps=steps,
        eta=0.0,
        output_type="pt",
    ).images
    assert images.shape == (2, 3, SIZE, SIZE) and images.dtype == torch.float32
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=1e-5)
    # The sampler ran the pipeline's timesteps.
    torch.testing.assert_close(schedule.timesteps, pipe.scheduler.timesteps, atol=0, rtol=0)


def test_initial_noise_is_the_pipelines_latent_shape(make_policy, pipe):
    policy = make_policy(height=48, width=32)
    noise = policy.initial_noise(3, torch.Generator().manual_seed(0))
    assert noise.shape == (3, 4, 24, 16) and noise.dtype == torch.float32
    latents = pipe.prepare_latents(
        3, 4, 48, 32, torch.float32, "cpu", torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(noise, latents, atol=0, rtol=0)


def test_decode_uses_the_vae_scaling_factor(make_policy, pipe):
    policy = make_policy(decode_batch_size=1)  # also: chunked decoding gives the batched result
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = policy.decode(latents)
        raw = pipe.vae.decode(latents / 0.18215).sample
    assert pipe.vae.config.scaling_factor == 0.18215
    torch.testing.assert_close(got, (raw / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=1e-5)


def test_prompts_are_encoded_once_and_the_cache_is_bounded(make_policy):
    policy = make_policy(prompt_cache_size=2)
    seen = []
    policy.text_encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    first = policy.encode([Prompt("a cat"), Prompt("a cat"), Prompt("a dog")])
    assert seen == [2]  # two distinct texts, one batch; the empty prompt was encoded at load
    policy.predict(torch.zeros(3, 4, 16, 16), torch.tensor([1, 2, 3]), first)
    assert seen == [2]  # guidance reuses the cached empty-prompt embedding
    again = policy.encode([Prompt("a dog"), Prompt("a cat")])
    assert seen == [2]
    torch.testing.assert_close(again["prompt_embeds"][0], first["prompt_embeds"][2])
    policy.encode([Prompt("a bird")])  # evicts the least recently used ("a dog" was used last)
    assert list(policy._prompt_cache) == ["a cat", "a bird"]
    uncached = make_policy(cache_prompts=False)
    uncached.encode([Prompt("a cat")])
    assert not uncached._prompt_cache


def test_gradient_checkpointing_gives_the_same_gradients(make_policy, perturb):
    grads = []
    for checkpointing in (False, True):
        policy = make_policy(gradient_checkpointing=checkpointing)
        perturb(policy, std=0.1)
        assert policy.unet.is_gradient_checkpointing == checkpointing
        policy.train(True)
        x = policy.initial_noise(2, torch.Generator().manual_seed(5))
        cond = policy.encode([Prompt(p) for p in PROMPTS])
        policy.predict(x, torch.tensor([500, 20]), cond).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.trainable_parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_full_finetune_trains_the_whole_unet_in_fp32(make_policy):
    policy = make_policy(finetune="full")
    trainable = policy.trainable_parameters()
    assert len(trainable) == len(list(policy.unet.parameters()))
    assert all(p.dtype == torch.float32 for p in trainable)
    assert not any(p.requires_grad for p in policy.text_encoder.parameters())
    assert not any(p.requires_grad for p in policy.vae.parameters())


def test_offload_frozen_is_a_no_op_on_cpu(make_policy):
    policy = make_policy(offload_frozen=True)
    assert not policy._offload.enabled
    assert policy.vae.device.type == "cpu" and policy.text_encoder.device.type == "cpu"
    policy.decode(policy.initial_noise(1, torch.Generator().manual_seed(0)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="offloading moves weights off a GPU")
def test_offload_frozen_on_cuda_keeps_encoder_and_vae_in_cpu_memory(tiny_sd):
    from dance.config import build
    from dance_sd.policy import SDConfig, SDPolicy

    runtime = Runtime.auto("cuda")
    values = {"model": str(tiny_sd), "height": SIZE, "width": SIZE}
    resident = SDPolicy(build(SDConfig, values), runtime)
    offloaded = SDPolicy(build(SDConfig, {**values, "offload_frozen": True}), runtime)
    assert offloaded.text_encoder.device.type == "cpu" and offloaded.vae.device.type == "cpu"
    assert resident.vae.device.type == "cuda" and offloaded.unet.device.type == "cuda"
    prompts = [Prompt(p) for p in PROMPTS]
    latents = resident.initial_noise(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for policy in (resident, offloaded):
            cond = policy.encode(prompts)
            assert cond["prompt_embeds"].device.type == "cuda"
            images = policy.decode(latents)
            assert images.device.type == "cuda"
    assert offloaded.text_encoder.device.type == "cpu" and offloaded.vae.device.type == "cpu"
    torch.testing.assert_close(
        offloaded.encode(prompts)["prompt_embeds"], resident.encode(prompts)["prompt_embeds"]
    )
    torch.testing.assert_close(offloaded.decode(latents), resident.decode(latents))


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"height": 36}, ConfigError, "policy.height must be a multiple of 8"),
        ({"lora_targets": []}, ConfigError, "lora_targets is empty"),
        ({"lora_targets": ["no_such_module"]}, ConfigError, "match no Stable Diffusion UNet"),
        ({"model": ""}, UsageError, "policy 'sd' needs a model"),
    ],
)
def test_bad_options_are_one_clear_error(make_policy, overrides, error, message):
    with pytest.raises(error, match=message):
        make_policy(**overrides)


def test_a_four_block_vae_has_the_sd_factor_8(tmp_path):
    """SD's VAE has four blocks: 40x40 pixels are a 5x5 latent."""
    from dance.config import build
    from dance_sd.policy import SDConfig, SDPolicy
    from dance_sd.tiny import build_tiny_sd

    path = build_tiny_sd(tmp_path / "sd8", vae_blocks=4)
    config = build(SDConfig, {"model": str(path), "height": 40, "width": 40})
    policy = SDPolicy(config, Runtime())
    assert policy.vae_scale_factor == 8
    assert policy.initial_noise(1, None).shape == (1, 4, 5, 5)


def test_image_prompts_are_refused(make_policy):
    with pytest.raises(UsageError, match="text-to-image"):
        make_policy().encode([Prompt("a cat", image=torch.zeros(3, 8, 8))])
