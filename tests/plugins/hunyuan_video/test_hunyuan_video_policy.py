"""The hunyuan-video policy against diffusers' HunyuanVideoPipeline on a tiny random checkpoint:
prompt encoding and its cache, noise, the transformer call, decoding, sampling end to end, and
LoRA weights loaded back into the pipeline."""

from __future__ import annotations

import pytest
import torch
from hunyuan_helpers import FRAMES, SIZE, TEXT_LEN

from dance.errors import UsageError
from dance.interfaces import Prompt, Runtime

TEXTS = ["a cat on the beach", "a red fox in the snow, cinematic lighting"]


def pipeline_transformer(pipe, latents, t, embeds, mask, pooled, guidance_scale):
    """The transformer called by hand as HunyuanVideoPipeline.__call__ calls it at scheduler
    timestep ``t`` (sigma * 1000)."""
    dtype = pipe.transformer.dtype
    guidance = torch.tensor([guidance_scale] * latents.shape[0], dtype=dtype) * 1000.0
    return pipe.transformer(
        hidden_states=latents.to(dtype),
        timestep=t.expand(latents.shape[0]).to(latents.dtype),
        encoder_hidden_states=embeds.to(dtype),
        encoder_attention_mask=mask.to(dtype),
        pooled_projections=pooled.to(dtype),
        guidance=guidance,
        return_dict=False,
    )[0]


def test_loads_every_component_frozen(make_t2v) -> None:
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel
    from transformers import CLIPTextModel, LlamaModel

    policy = make_t2v()
    assert (policy.name, policy.modality, policy.prediction_type) == (
        "hunyuan-video",
        "video",
        "flow",
    )
    assert isinstance(policy.text_encoder, LlamaModel)
    assert isinstance(policy.text_encoder_2, CLIPTextModel)
    assert isinstance(policy.vae, AutoencoderKLHunyuanVideo) and policy.vae.use_tiling
    assert isinstance(policy.transformer, HunyuanVideoTransformer3DModel)
    assert policy.transformer.is_gradient_checkpointing
    for module in (policy.text_encoder, policy.text_encoder_2, policy.vae):
        assert not any(p.requires_grad for p in module.parameters())
    assert policy.trainable_modules() == [policy.transformer]
    assert not make_t2v(vae_tiling=False, gradient_checkpointing=False).vae.use_tiling


def test_encode_matches_encode_prompt(make_t2v, t2v_pipe) -> None:
    policy = make_t2v()
    long_prompt = " ".join(["a photo of a cat wearing a golden hat"] * 12)  # > 77 CLIP tokens
    texts = [*TEXTS, long_prompt]
    cond = policy.encode([Prompt(t) for t in texts])
    with torch.no_grad():  # as in the pipeline's __call__
        embeds, pooled, mask = t2v_pipe.encode_prompt(texts, max_sequence_length=TEXT_LEN)
    assert set(cond) == {"prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds"}
    assert cond["prompt_embeds"].shape == (3, TEXT_LEN, 32)
    assert torch.equal(cond["prompt_embeds"], embeds)
    assert torch.equal(cond["prompt_attention_mask"], mask)
    assert torch.equal(cond["pooled_prompt_embeds"], pooled)
    # Right padding: the short prompt's mask ends in zeros, the long one is cut at TEXT_LEN.
    assert mask[0, 0] == 1 and mask[0, -1] == 0 and mask[2].all()


def test_template_prefix_is_the_pipelines_crop_start(make_t2v) -> None:
    """The tiny Llama tokenizer splits the template as Llama 3 does: crop_start 95 holds."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    from dance_hunyuan_video.prompting import DEFAULT_CROP_START, DEFAULT_TEMPLATE

    assert DEFAULT_PROMPT_TEMPLATE["template"] == DEFAULT_TEMPLATE
    assert DEFAULT_PROMPT_TEMPLATE["crop_start"] == DEFAULT_CROP_START
    tokenizer = make_t2v().tokenizer
    assert len(tokenizer(DEFAULT_TEMPLATE.split("{}")[0]).input_ids) == DEFAULT_CROP_START


class CallCounter:
    """Counts forward calls of a module and the rows each call saw."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.rows: list[int] = []
        module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        ids = args[0] if args else kwargs["input_ids"]
        self.rows.append(ids.shape[0])


def test_encode_caches_each_prompt_once_least_recently_used_out(make_t2v) -> None:
    policy = make_t2v(prompt_cache_size=2)
    llama, clip = CallCounter(policy.text_encoder), CallCounter(policy.text_encoder_2)
    first = policy.encode([Prompt("a cat"), Prompt("a dog"), Prompt("a cat")])
    assert llama.rows == [2] and clip.rows == [2]
    assert torch.equal(first["prompt_embeds"][0], first["prompt_embeds"][2])
    policy.encode([Prompt("a dog"), Prompt("a cat")])
    assert llama.rows == [2]  # both cached
    policy.encode([Prompt("a bird")])  # drops "a dog", the least recently used
    policy.encode([Prompt("a cat")])
    assert llama.rows == [2, 1]
    policy.encode([Prompt("a dog")])
    assert llama.rows == [2, 1, 1]
    uncached = make_t2v(cache_prompts=False)
    counter = CallCounter(uncached.text_encoder)
    uncached.encode([Prompt("a cat")])
    uncached.encode([Prompt("a cat")])
    assert counter.rows == [1, 1]


def test_encode_refuses_images(make_t2v) -> None:
    with pytest.raises(UsageError, match="text-to-video"):
        make_t2v().encode([Prompt("a cat", image=torch.zeros(3, 8, 8))])


def test_initial_noise_matches_prepare_latents(make_t2v, t2v_pipe) -> None:
    noise = make_t2v().initial_noise(2, torch.Generator().manual_seed(7))
    expected = t2v_pipe.prepare_latents(
        2,
        4,
        SIZE,
        SIZE,
        FRAMES,
        torch.float32,
        torch.device("cpu"),
        torch.Generator().manual_seed(7),
    )
    assert noise.shape == (2, 4, 3, 8, 8) and torch.equal(noise, expected)


def test_predict_matches_the_transformer(make_t2v, t2v_pipe) -> None:
    policy = make_t2v(guidance=4.5)
    cond = policy.encode([Prompt(t) for t in TEXTS])
    latents = policy.initial_noise(2, torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.9, 0.35])
    with torch.no_grad():
        got = policy.predict(latents, sigmas, cond)
        expected = torch.cat(
            [
                pipeline_transformer(
                    t2v_pipe,
                    latents[i : i + 1],
                    sigmas[i] * 1000,
                    cond["prompt_embeds"][i : i + 1],
                    cond["prompt_attention_mask"][i : i + 1],
                    cond["pooled_prompt_embeds"][i : i + 1],
                    4.5,
                )
                for i in range(2)
            ]
        )
        other_guidance = make_t2v(guidance=6.0).predict(latents, sigmas, cond)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, other_guidance, atol=1e-4)


def test_decode_matches_the_pipeline_output_stage(make_t2v, t2v_pipe) -> None:
    policy = make_t2v()
    latents = policy.initial_noise(2, torch.Generator().manual_seed(3))
    video = policy.decode(latents)
    with torch.no_grad():
        raw = t2v_pipe.vae.decode(latents / t2v_pipe.vae.config.scaling_factor).sample
    expected = t2v_pipe.video_processor.postprocess_video(raw, output_type="pt")  # [B, F, C, H, W]
    assert video.shape == (2, 3, FRAMES, SIZE, SIZE) and video.dtype == torch.float32
    torch.testing.assert_close(video, expected.permute(0, 2, 1, 3, 4), atol=1e-5, rtol=1e-5)


def test_ode_sampling_reproduces_the_pipeline(make_t2v, t2v_pipe) -> None:
    """The ode sampler + policy + decode against HunyuanVideoPipeline.__call__ with its Euler
    scheduler at the same shift and steps, from the same initial latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from dance.sampling.generate import denoise
    from dance_flow_samplers.ode import EulerODESampler, ODEConfig

    policy = make_t2v()
    x = policy.initial_noise(1, torch.Generator().manual_seed(5))
    sampler = EulerODESampler(ODEConfig(num_steps=3, shift=5.0), Runtime())
    cond = policy.encode([Prompt(TEXTS[0])])
    with torch.no_grad():
        for out in denoise(
            policy, sampler, sampler.schedule(), x.clone(), cond, deterministic=True
        ):
            latents = out.next_latents
        video = policy.decode(latents)
    t2v_pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        t2v_pipe.scheduler.config, shift=5.0
    )
    expected = t2v_pipe(
        prompt=TEXTS[0],
        height=SIZE,
        width=SIZE,
        num_frames=FRAMES,
        num_inference_steps=3,
        latents=x.clone(),
        max_sequence_length=TEXT_LEN,
        output_type="pt",
    ).frames  # [1, F, C, H, W]
    torch.testing.assert_close(video, expected.permute(0, 2, 1, 3, 4), atol=1e-4, rtol=1e-4)


def test_lora_weights_load_into_the_pipeline(make_t2v, t2v_pipe, perturb, tmp_path) -> None:
    policy = make_t2v()
    perturb(policy)
    policy.save_trained(str(tmp_path))
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()
    cond = policy.encode([Prompt(TEXTS[0])])
    latents = policy.initial_noise(1, torch.Generator().manual_seed(0))
    args = (
        latents,
        torch.tensor(700.0),
        cond["prompt_embeds"],
        cond["prompt_attention_mask"],
        cond["pooled_prompt_embeds"],
        6.0,
    )
    with torch.no_grad():
        trained = policy.predict(latents, torch.tensor([0.7]), cond)
        base = pipeline_transformer(t2v_pipe, *args)
        t2v_pipe.load_lora_weights(str(tmp_path))
        loaded = pipeline_transformer(t2v_pipe, *args)
    assert not torch.allclose(trained, base, atol=1e-3)
    torch.testing.assert_close(loaded, trained, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(make_t2v, perturb) -> None:
    grads = []
    for checkpointing in (True, False):
        policy = make_t2v(gradient_checkpointing=checkpointing)
        perturb(policy)
        policy.train(True)
        cond = policy.encode([Prompt(TEXTS[0])])
        latents = policy.initial_noise(1, torch.Generator().manual_seed(0))
        policy.predict(latents, torch.tensor([0.5]), cond).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.trainable_parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_full_finetune_round_trip(make_t2v, tmp_path) -> None:
    policy = make_t2v(finetune="full")
    assert len(policy.trainable_parameters()) == len(list(policy.transformer.parameters()))
    policy.prepare_reference()
    with torch.no_grad():
        policy.transformer.proj_out.bias.add_(0.5)
    policy.save_trained(str(tmp_path))
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = make_t2v(finetune="full")
    cond = policy.encode([Prompt(TEXTS[0])])
    latents = policy.initial_noise(1, torch.Generator().manual_seed(0))
    t = torch.tensor([0.5])
    with torch.no_grad():
        before = loaded.predict(latents, t, cond)
        loaded.load_trained(str(tmp_path))
        torch.testing.assert_close(
            loaded.predict(latents, t, cond), policy.predict(latents, t, cond)
        )
        with policy.reference():
            torch.testing.assert_close(policy.predict(latents, t, cond), before)
    with pytest.raises(UsageError, match="finetune=full"):
        make_t2v().load_trained(str(tmp_path))
