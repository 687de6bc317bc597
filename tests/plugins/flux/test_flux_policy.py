"""The FLUX policy against diffusers' FluxPipeline on a tiny random checkpoint: loading, prompt
encoding and its cache, noise, prediction, decoding, and the reference model."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from dance.interfaces import Conditioning, Prompt
from dance_flux.policy import FluxPolicy

PROMPTS = ["a photo of a cat", "a red fox in the snow, cinematic lighting", "a photo of a cat"]


def prompts(*texts: str) -> list[Prompt]:
    return [Prompt(t) for t in texts]


def inputs(policy: FluxPolicy, batch: int = 2, seed: int = 0):
    """Latents, sigmas and conditioning for one predict call."""
    gen = torch.Generator().manual_seed(seed)
    latents = policy.initial_noise(batch, gen)
    sigmas = torch.rand(batch, generator=gen)
    cond = policy.encode(prompts(*PROMPTS[:batch]))
    return latents, sigmas, cond


def direct_transformer(transformer, latents, sigmas, cond, ids, guidance=3.5):
    """The transformer called by hand as FluxPipeline.__call__ calls it."""
    batch = latents.shape[0]
    return transformer(
        hidden_states=latents,
        timestep=sigmas,
        guidance=torch.full([1], guidance, dtype=torch.float32).expand(batch),
        pooled_projections=cond["pooled_prompt_embeds"],
        encoder_hidden_states=cond["prompt_embeds"],
        txt_ids=torch.zeros(cond["prompt_embeds"].shape[1], 3),
        img_ids=ids,
        return_dict=False,
    )[0]


def test_loads_every_component_frozen(make_policy) -> None:
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    policy = make_policy()
    assert (policy.name, policy.modality, policy.prediction_type) == ("flux", "image", "flow")
    assert isinstance(policy.text_encoder, CLIPTextModel)
    assert isinstance(policy.text_encoder_2, T5EncoderModel)
    assert isinstance(policy.vae, AutoencoderKL)
    assert isinstance(policy.transformer, FluxTransformer2DModel)
    assert policy.vae_scale_factor == 2 and policy.latent_channels == 4
    for module in (policy.text_encoder, policy.text_encoder_2, policy.vae):
        assert not any(p.requires_grad for p in module.parameters())
        assert not module.training
    assert policy.trainable_modules() == [policy.transformer]
    policy.train(True)
    assert policy.transformer.training
    policy.train(False)
    assert not policy.transformer.training


def test_initial_noise_matches_prepare_latents(make_policy, pipe) -> None:
    policy = make_policy()
    noise = policy.initial_noise(3, torch.Generator().manual_seed(7))
    expected, image_ids = pipe.prepare_latents(
        3, 4, 32, 32, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(7)
    )
    assert noise.shape == (3, 64, 16) and noise.dtype == torch.float32
    assert torch.equal(noise, expected)
    assert torch.equal(policy._image_ids(64), image_ids)
    other = policy.initial_noise(3, torch.Generator().manual_seed(8))
    assert not torch.equal(noise, other)


def test_encode_matches_encode_prompt(make_policy, pipe) -> None:
    policy = make_policy()
    long_prompt = " ".join(["a photo of a cat wearing a golden hat"] * 12)  # > 77 CLIP tokens
    texts = [*PROMPTS, long_prompt]
    cond = policy.encode(prompts(*texts))
    with torch.no_grad():  # as in FluxPipeline.__call__ (grad mode picks other kernels)
        embeds, pooled, text_ids = pipe.encode_prompt(prompt=texts, max_sequence_length=16)
    assert set(cond) == {"prompt_embeds", "pooled_prompt_embeds"}
    assert cond["prompt_embeds"].shape == (4, 16, 32)
    assert cond["pooled_prompt_embeds"].shape == (4, 32)
    assert torch.equal(cond["prompt_embeds"], embeds)
    assert torch.equal(cond["pooled_prompt_embeds"], pooled)
    assert torch.equal(policy._text_ids(16), text_ids)
    assert not torch.equal(cond["prompt_embeds"][0], cond["prompt_embeds"][1])


class CallCounter:
    """Counts forward calls of a module and the rows each call saw."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.rows: list[int] = []
        module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        self.rows.append(args[0].shape[0])


def test_encode_caches_each_prompt_once(make_policy) -> None:
    policy = make_policy()
    clip, t5 = CallCounter(policy.text_encoder), CallCounter(policy.text_encoder_2)
    first = policy.encode(prompts("a cat", "a dog", "a cat"))
    assert clip.rows == [2] and t5.rows == [2]  # the repeated prompt is encoded once
    assert torch.equal(first["prompt_embeds"][0], first["prompt_embeds"][2])
    again = policy.encode(prompts("a dog", "a cat"))
    assert clip.rows == [2] and t5.rows == [2]  # both cached: no encoder call at all
    assert torch.equal(again["prompt_embeds"], first["prompt_embeds"][[1, 0]])
    assert torch.equal(again["pooled_prompt_embeds"], first["pooled_prompt_embeds"][[1, 0]])
    policy.encode(prompts("a bird", "a cat"))
    assert clip.rows == [2, 1] and t5.rows == [2, 1]  # only the new prompt


def test_encode_without_cache_encodes_every_call(make_policy) -> None:
    policy = make_policy(cache_prompts=False)
    t5 = CallCounter(policy.text_encoder_2)
    policy.encode(prompts("a cat", "a cat"))
    policy.encode(prompts("a cat"))
    assert t5.rows == [1, 1]


def test_prompt_cache_drops_least_recently_used(make_policy) -> None:
    policy = make_policy(prompt_cache_size=2)
    t5 = CallCounter(policy.text_encoder_2)
    for text in ("a cat", "a dog", "a cat", "a bird"):  # "a dog" is the least recently used
        policy.encode(prompts(text))
    assert t5.rows == [1, 1, 1]
    policy.encode(prompts("a cat", "a bird"))
    assert t5.rows == [1, 1, 1]
    policy.encode(prompts("a dog"))
    assert t5.rows == [1, 1, 1, 1]


def test_encode_refuses_images(make_policy) -> None:
    from dance.errors import UsageError

    with pytest.raises(UsageError, match="text-to-image"):
        make_policy().encode([Prompt("a cat", image=torch.zeros(3, 8, 8))])


def test_predict_matches_the_transformer(make_policy, pipe) -> None:
    policy = make_policy()
    latents, sigmas, cond = inputs(policy)
    out = policy.predict(latents, sigmas, cond)
    _, ids = pipe.prepare_latents(2, 4, 32, 32, torch.float32, torch.device("cpu"), None)
    with torch.no_grad():
        expected = direct_transformer(pipe.transformer, latents, sigmas, cond, ids)
        other_guidance = direct_transformer(pipe.transformer, latents, sigmas, cond, ids, 1.0)
    assert out.shape == latents.shape and out.dtype == torch.float32
    assert torch.equal(out, expected)
    assert not torch.allclose(out, other_guidance)  # guidance reaches the transformer
    assert not torch.allclose(out, policy.predict(latents, sigmas.flip(0), cond))


def test_predict_works_on_selected_and_concatenated_conditioning(make_policy) -> None:
    policy = make_policy()
    latents, sigmas, cond = inputs(policy)
    both = policy.predict(latents, sigmas, cond)
    second = policy.predict(latents[1:], sigmas[1:], cond.select(torch.tensor([1])))
    torch.testing.assert_close(second, both[1:], rtol=1e-5, atol=1e-6)
    doubled = Conditioning.cat([cond, cond])
    out = policy.predict(torch.cat([latents, latents]), torch.cat([sigmas, sigmas]), doubled)
    torch.testing.assert_close(out[2:], out[:2], rtol=1e-5, atol=1e-6)


def test_predict_rejects_latents_of_another_size(make_policy) -> None:
    policy = make_policy()
    latents, sigmas, cond = inputs(policy)
    with pytest.raises(ValueError, match="tokens"):
        policy.predict(latents[:, :16], sigmas, cond)


def test_sampling_and_decode_reproduce_the_pipeline(make_policy, pipe) -> None:
    """An Euler loop over policy.predict reproduces FluxPipeline's latents and images."""
    policy = make_policy()
    kwargs = dict(height=32, width=32, num_inference_steps=3, guidance_scale=3.5)
    kwargs.update(max_sequence_length=16)
    pipe_latents = pipe(
        "a photo of a cat",
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
        **kwargs,
    ).images
    pipe_images = pipe(
        "a photo of a cat", generator=torch.Generator().manual_seed(3), output_type="pt", **kwargs
    ).images
    sigmas = pipe.scheduler.sigmas  # [1, ..., 0] with the checkpoint's shift

    cond = policy.encode(prompts("a photo of a cat"))
    x = policy.initial_noise(1, torch.Generator().manual_seed(3))
    with torch.no_grad():
        for k in range(len(sigmas) - 1):
            v = policy.predict(x, sigmas[k : k + 1], cond)
            x = x + (sigmas[k + 1] - sigmas[k]) * v
    torch.testing.assert_close(x, pipe_latents, rtol=1e-5, atol=1e-5)
    images = policy.decode(x)
    assert images.shape == (1, 3, 32, 32) and images.dtype == torch.float32
    torch.testing.assert_close(images, pipe_images, rtol=1e-4, atol=1e-4)


def test_decode_gives_pixels_in_unit_range(make_policy) -> None:
    policy = make_policy()
    latents = policy.initial_noise(2, torch.Generator().manual_seed(0)) * 3  # wide values
    latents.requires_grad_(True)
    images = policy.decode(latents)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert images.min() < images.max()  # not a constant image
    assert not images.requires_grad


def test_schnell_without_guidance_embedding(tmp_path: Path, make_policy, caplog) -> None:
    from diffusers import FluxTransformer2DModel

    from dance_flux.tiny import build_tiny_flux

    path = build_tiny_flux(tmp_path / "schnell", guidance_embeds=False)
    with caplog.at_level(logging.INFO, logger="dance_flux.policy"):
        policy = make_policy(model=str(path), guidance=7.0)
    assert "guidance" in caplog.text and "ignored" in caplog.text
    latents, sigmas, cond = inputs(policy)
    transformer = FluxTransformer2DModel.from_pretrained(path / "transformer")
    with torch.no_grad():
        expected = transformer(
            hidden_states=latents,
            timestep=sigmas,
            guidance=None,
            pooled_projections=cond["pooled_prompt_embeds"],
            encoder_hidden_states=cond["prompt_embeds"],
            txt_ids=torch.zeros(16, 3),
            img_ids=policy._image_ids(64),
            return_dict=False,
        )[0]
    assert torch.equal(policy.predict(latents, sigmas, cond), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_keeps_frozen_parts_in_bf16(tiny_flux: Path) -> None:
    from dance.config import build
    from dance.interfaces import Runtime
    from dance_flux.policy import FluxConfig

    config = build(FluxConfig, {"model": str(tiny_flux), "height": 32, "width": 32})
    config.max_sequence_length, config.lora_rank, config.lora_alpha = 16, 4, 8.0
    gpu = FluxPolicy(config, Runtime.auto("cuda"))
    cpu = FluxPolicy(config, Runtime())
    assert gpu.text_encoder_2.dtype == torch.bfloat16 and gpu.vae.dtype == torch.bfloat16
    lora = {p.dtype for p in gpu.trainable_parameters()}
    base = {p.dtype for p in gpu.transformer.parameters() if not p.requires_grad}
    assert lora == {torch.float32} and base == {torch.bfloat16}
    latents, sigmas, cond = inputs(cpu)
    expected = cpu.predict(latents, sigmas, cond)
    out = gpu.predict(latents.cuda(), sigmas.cuda(), gpu.encode(prompts(*PROMPTS[:2])))
    assert out.dtype == torch.float32 and out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), expected, rtol=0.1, atol=0.1)
    out.square().mean().backward()
    assert all(p.grad is not None for p in gpu.trainable_parameters())
    images = gpu.decode(gpu.initial_noise(1, torch.Generator().manual_seed(0)))
    assert images.dtype == torch.float32 and images.device.type == "cuda"


def test_offload_frozen_is_a_no_op_on_cpu(make_policy) -> None:
    policy = make_policy(offload_frozen=True)
    assert not policy._offload.enabled
    for module in (policy.text_encoder, policy.text_encoder_2, policy.vae):
        assert next(module.parameters()).device.type == "cpu"
    cond = policy.encode(prompts("a red circle"))
    assert policy.decode(policy.initial_noise(1, torch.Generator().manual_seed(0))).shape[0] == 1
    assert cond.batch_size() == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="offloading moves weights off a GPU")
def test_offload_frozen_on_cuda_gives_the_same_outputs(tiny_flux: Path) -> None:
    from dance.config import build
    from dance.interfaces import Runtime
    from dance_flux.policy import FluxConfig

    values = {"model": str(tiny_flux), "height": 32, "width": 32, "max_sequence_length": 16}
    runtime = Runtime.auto("cuda")
    resident = FluxPolicy(build(FluxConfig, values), runtime)
    offloaded = FluxPolicy(build(FluxConfig, {**values, "offload_frozen": True}), runtime)
    assert next(offloaded.text_encoder_2.parameters()).device.type == "cpu"
    assert next(offloaded.transformer.parameters()).device.type == "cuda"
    latents = resident.initial_noise(1, torch.Generator().manual_seed(0))
    for policy in (resident, offloaded):
        cond = policy.encode(prompts("a red circle"))
        assert cond["prompt_embeds"].device.type == "cuda"
    torch.testing.assert_close(offloaded.decode(latents), resident.decode(latents))
    assert next(offloaded.vae.parameters()).device.type == "cpu"
