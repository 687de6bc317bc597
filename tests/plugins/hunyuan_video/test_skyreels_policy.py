"""The skyreels-i2v policy against diffusers' HunyuanSkyreelsImageToVideoPipeline on a tiny random
checkpoint: image latents, true classifier-free guidance, sampling end to end, LoRA weights."""

from __future__ import annotations

import pytest
import torch
from hunyuan_helpers import FRAMES, SIZE, TEXT_LEN, random_image

from dance.errors import UsageError
from dance.interfaces import Prompt, Runtime


def guided_by_hand(pipe, latents, image_latents, t, cond, negative, cfg_scale, guidance=1.0):
    """Two transformer calls as the SkyReels pipeline's __call__ makes them (conditional and
    negative, each on [latents, image latents] over channels), combined with true CFG."""
    dtype = pipe.transformer.dtype
    hidden = torch.cat([latents, image_latents], dim=1).to(dtype)
    kwargs = {
        "hidden_states": hidden,
        "timestep": t.expand(latents.shape[0]).to(latents.dtype),
        "guidance": torch.tensor([guidance] * latents.shape[0], dtype=dtype) * 1000.0,
        "return_dict": False,
    }
    outs = [
        pipe.transformer(
            encoder_hidden_states=c["prompt_embeds"].to(dtype),
            encoder_attention_mask=c["prompt_attention_mask"].to(dtype),
            pooled_projections=c["pooled_prompt_embeds"].to(dtype),
            **kwargs,
        )[0]
        for c in (cond, negative)
    ]
    return outs[1] + cfg_scale * (outs[0] - outs[1])


def test_encode_needs_an_image(make_i2v) -> None:
    policy = make_i2v()
    with pytest.raises(UsageError, match="has no image"):
        policy.encode([Prompt("a cat")])
    with pytest.raises(UsageError, match=r"\[3, H, W\]"):
        policy.encode([Prompt("a cat", torch.zeros(4, 8, 8))])


def test_image_latents_match_prepare_latents(make_i2v, i2v_pipe) -> None:
    """Stretch-resize, VAE posterior draw with a seeded generator, scaling factor, zero padding
    over the other latent frames: the pipeline's prepare_latents for the same image and seed."""
    image = random_image(0, 40, 48)
    policy = make_i2v(image_resize="stretch", image_latent="sample", image_latent_seed=3)
    cond = policy.encode([Prompt("a cat", image)])
    pixels = i2v_pipe.video_processor.preprocess(image[None], height=SIZE, width=SIZE)
    torch.testing.assert_close(policy.prepare_image(image), pixels, atol=1e-6, rtol=0)
    noise = policy.initial_noise(1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        latents, image_latents = i2v_pipe.prepare_latents(
            pixels, 1, 4, SIZE, SIZE, FRAMES, torch.float32, torch.device("cpu"),
            torch.Generator().manual_seed(3), noise,
        )  # fmt: skip
    assert cond["image_latents"].shape == (1, 4, 1, 8, 8)
    torch.testing.assert_close(cond["image_latents"], image_latents[:, :, :1], atol=1e-6, rtol=0)
    assert not image_latents[:, :, 1:].any()  # the padding the policy adds in predict
    mode = make_i2v(image_resize="stretch", image_latent="mode").encode([Prompt("a cat", image)])
    with torch.no_grad():
        mean = i2v_pipe.vae.encode(pixels.unsqueeze(2)).latent_dist.mode()
    torch.testing.assert_close(mode["image_latents"], mean * 0.476986, atol=1e-6, rtol=0)


def test_crop_resize_keeps_the_aspect_ratio(make_i2v) -> None:
    policy = make_i2v()
    # A 32x64 image whose left and right quarters differ from its centre: cropping to 32x32
    # keeps only the centre.
    image = torch.zeros(3, 32, 64)
    image[:, :, 16:48] = 1.0
    assert torch.equal(policy.prepare_image(image), torch.ones(1, 3, SIZE, SIZE))
    same_size = random_image(2)
    assert torch.allclose(policy.prepare_image(same_size), same_size[None] * 2 - 1)
    large = policy.prepare_image(random_image(3, 80, 60))
    assert large.shape == (1, 3, SIZE, SIZE) and large.min() >= -1 and large.max() <= 1


def test_image_latents_are_cached_per_image(make_i2v) -> None:
    policy = make_i2v()
    calls = []
    policy.vae.encoder.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    image, other = random_image(0), random_image(1)
    first = policy.encode([Prompt("a", image), Prompt("b", other), Prompt("c", image.clone())])
    assert len(calls) == 2
    assert torch.equal(first["image_latents"][0], first["image_latents"][2])
    policy.encode([Prompt("d", other)])
    assert len(calls) == 2


def test_predict_is_true_cfg_against_the_negative_prompt(make_i2v, i2v_pipe) -> None:
    policy = make_i2v(negative_prompt="blurry, low quality")
    prompts = [Prompt("a cat on the beach", random_image(0)), Prompt("a red fox", random_image(1))]
    cond = policy.encode(prompts)
    latents = policy.initial_noise(2, torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.9, 0.35])
    with torch.no_grad():
        embeds, pooled, mask = i2v_pipe.encode_prompt(
            ["blurry, low quality"], max_sequence_length=TEXT_LEN
        )
        negative = {
            "prompt_embeds": embeds,
            "prompt_attention_mask": mask,
            "pooled_prompt_embeds": pooled,
        }
        padded = torch.cat([cond["image_latents"], torch.zeros(2, 4, 2, 8, 8)], dim=2)
        expected = torch.cat(
            [
                guided_by_hand(
                    i2v_pipe,
                    latents[i : i + 1],
                    padded[i : i + 1],
                    sigmas[i] * 1000,
                    {k: v[i : i + 1] for k, v in cond.items()},
                    negative,
                    5.0,
                )
                for i in range(2)
            ]
        )
        got = policy.predict(latents, sigmas, cond)
        no_cfg = make_i2v(cfg_scale=1.0).predict(latents, sigmas, cond)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, no_cfg, atol=1e-4)


def test_ode_sampling_reproduces_the_pipeline(make_i2v, i2v_pipe) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from dance.sampling.generate import denoise
    from dance_flow_samplers.ode import EulerODESampler, ODEConfig

    image = random_image(4, 48, 40)
    policy = make_i2v(image_resize="stretch", image_latent_seed=11)
    x = policy.initial_noise(1, torch.Generator().manual_seed(5))
    sampler = EulerODESampler(ODEConfig(num_steps=3, shift=7.0), Runtime())
    cond = policy.encode([Prompt("a cat on the beach", image)])
    with torch.no_grad():
        for out in denoise(
            policy, sampler, sampler.schedule(), x.clone(), cond, deterministic=True
        ):
            latents = out.next_latents
        video = policy.decode(latents)
    i2v_pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        i2v_pipe.scheduler.config, shift=7.0
    )
    expected = i2v_pipe(
        image=image[None],
        prompt="a cat on the beach",
        negative_prompt="",
        true_cfg_scale=5.0,
        guidance_scale=1.0,
        height=SIZE,
        width=SIZE,
        num_frames=FRAMES,
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(11),  # draws the image latents only
        latents=x.clone(),
        max_sequence_length=TEXT_LEN,
        output_type="pt",
    ).frames
    torch.testing.assert_close(video, expected.permute(0, 2, 1, 3, 4), atol=1e-4, rtol=1e-4)


def test_lora_weights_load_into_the_pipeline(make_i2v, i2v_pipe, perturb, tmp_path) -> None:
    policy = make_i2v(cfg_scale=1.0)
    perturb(policy)
    policy.save_trained(str(tmp_path))
    cond = policy.encode([Prompt("a cat", random_image(0))])
    latents = policy.initial_noise(1, torch.Generator().manual_seed(0))
    padded = torch.cat([cond["image_latents"], torch.zeros(1, 4, 2, 8, 8)], dim=2)
    with torch.no_grad():
        trained = policy.predict(latents, torch.tensor([0.7]), cond)
        i2v_pipe.load_lora_weights(str(tmp_path))
        text = {k: v for k, v in cond.items() if k != "image_latents"}
        # cfg_scale 1: the negative branch drops out (1 * positive + 0 * negative).
        loaded = guided_by_hand(i2v_pipe, latents, padded, torch.tensor(700.0), text, text, 1.0)
    torch.testing.assert_close(loaded, trained, atol=1e-5, rtol=1e-5)
