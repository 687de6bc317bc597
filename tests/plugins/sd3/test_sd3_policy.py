"""The sd3 policy computes what diffusers' StableDiffusion3Pipeline computes from the same inputs,
and its trained LoRA loads back into the pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dance.errors import ConfigError, ModelLayoutError, UsageError
from dance.interfaces import Prompt
from dance.testing.pipeline_reference import euler_sample

PROMPTS = ["a red cat on the left", "two blue squares"]
SIZE, T5_LEN = 32, 16  # the make_policy fixture's image size and T5 length


def pipeline_embeddings(pipe, texts):
    """(prompt, negative, pooled, negative pooled) as StableDiffusion3Pipeline encodes them, with
    gradients off as in its __call__ (grad mode picks other kernels)."""
    with torch.no_grad():
        return pipe.encode_prompt(
            prompt=texts,
            prompt_2=None,
            prompt_3=None,
            device=torch.device("cpu"),
            do_classifier_free_guidance=True,
            max_sequence_length=T5_LEN,
        )


def test_loads_every_component_frozen(make_policy):
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    policy = make_policy()
    assert (policy.name, policy.modality, policy.prediction_type) == ("sd3", "image", "flow")
    assert isinstance(policy.text_encoder, CLIPTextModelWithProjection)
    assert isinstance(policy.text_encoder_2, CLIPTextModelWithProjection)
    assert isinstance(policy.text_encoder_3, T5EncoderModel)
    assert isinstance(policy.vae, AutoencoderKL) and policy.vae.config.latent_channels == 16
    assert isinstance(policy.transformer, SD3Transformer2DModel)
    for module in (policy.text_encoder, policy.text_encoder_2, policy.text_encoder_3, policy.vae):
        assert not any(p.requires_grad for p in module.parameters())
    assert policy.trainable_modules() == [policy.transformer]
    blocks = [m for m in policy.transformer.modules() if isinstance(m, policy.block_classes)]
    assert len(blocks) == policy.transformer.config.num_layers


def test_encode_matches_the_pipeline(make_policy, pipe):
    policy = make_policy()
    long_prompt = " ".join(["a photo of a cat wearing a golden hat"] * 12)  # > 77 CLIP tokens
    texts = [*PROMPTS, long_prompt]
    cond = policy.encode([Prompt(t) for t in texts])
    embeds, negative, pooled, negative_pooled = pipeline_embeddings(pipe, texts)
    assert cond["prompt_embeds"].shape == (3, 77 + T5_LEN, 96)  # CLIP padded to T5's width
    torch.testing.assert_close(cond["prompt_embeds"], embeds, atol=0, rtol=0)
    torch.testing.assert_close(cond["pooled_prompt_embeds"], pooled, atol=0, rtol=0)
    # The unconditional branch is the pipeline's negative for no negative prompt (""), encoded
    # once as a batch of one (the pipeline encodes it once per prompt: float rounding may differ).
    uncond = policy.negative_conditioning()
    for key, expected in (("prompt_embeds", negative), ("pooled_prompt_embeds", negative_pooled)):
        got = uncond[key].expand_as(expected)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_predict_is_the_transformer_with_classifier_free_guidance(make_policy, pipe):
    """[uncond, cond] in one transformer batch at timestep sigma * 1000, then v_u + 4.5 (v_c -
    v_u), at a different sigma per sample."""
    policy = make_policy()
    assert policy.config.guidance_scale == 4.5
    x = policy.initial_noise(2, torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.9, 0.3])
    with torch.no_grad():
        got = policy.predict(x, sigmas, policy.encode([Prompt(p) for p in PROMPTS]))
        embeds, negative, pooled, negative_pooled = pipeline_embeddings(pipe, PROMPTS)
        v = pipe.transformer(
            hidden_states=torch.cat([x, x]),
            timestep=torch.cat([sigmas, sigmas]) * 1000,
            encoder_hidden_states=torch.cat([negative, embeds]),
            pooled_projections=torch.cat([negative_pooled, pooled]),
        ).sample
    v_uncond, v_cond = v.chunk(2)
    torch.testing.assert_close(got, v_uncond + 4.5 * (v_cond - v_uncond), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, v_cond, atol=1e-3)  # guidance changed something


def test_guidance_scale_one_is_a_single_conditional_pass(make_policy):
    policy = make_policy(guidance_scale=1.0)
    calls = []
    policy.transformer.register_forward_hook(
        lambda m, args, kwargs, out: calls.append(kwargs["hidden_states"].shape[0]),
        with_kwargs=True,
    )
    x = policy.initial_noise(1, torch.Generator().manual_seed(1))
    with torch.no_grad():
        policy.predict(x, torch.tensor([0.5]), policy.encode([Prompt(PROMPTS[0])]))
    assert calls == [1]


def test_initial_noise_is_the_pipelines_latent_shape(make_policy, pipe):
    policy = make_policy(height=48, width=32)
    noise = policy.initial_noise(3, torch.Generator().manual_seed(0))
    assert noise.shape == (3, 16, 24, 16) and noise.dtype == torch.float32
    latents = pipe.prepare_latents(
        3, 16, 48, 32, torch.float32, "cpu", torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(noise, latents, atol=0, rtol=0)


def test_sampling_and_decode_reproduce_the_pipeline(make_policy, pipe):
    """An Euler loop over policy.predict, decoded, is the pipeline's image (guidance 4.5)."""
    policy = make_policy()
    kwargs = dict(height=SIZE, width=SIZE, num_inference_steps=3, guidance_scale=4.5)
    kwargs.update(max_sequence_length=T5_LEN)
    noise = policy.initial_noise(1, torch.Generator().manual_seed(3))
    expected = pipe(PROMPTS[0], latents=noise.clone(), output_type="pt", **kwargs).images
    sigmas = pipe.scheduler.sigmas  # [1, ..., 0] with the checkpoint's shift 3
    x = euler_sample(policy, policy.encode([Prompt(PROMPTS[0])]), noise, sigmas)
    images = policy.decode(x)
    assert images.shape == (1, 3, SIZE, SIZE) and images.dtype == torch.float32
    torch.testing.assert_close(images, expected, atol=1e-4, rtol=1e-4)


def test_lora_loads_into_the_pipeline_and_reproduces_the_trained_model(
    make_policy, perturb, pipe, tmp_path: Path
):
    """The requirement: StableDiffusion3Pipeline.load_lora_weights of what save_trained wrote
    generates the trained policy's image."""
    policy = make_policy()
    perturb(policy, std=0.3)
    policy.save_trained(str(tmp_path / "lora"))
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    kwargs = dict(height=SIZE, width=SIZE, num_inference_steps=3, guidance_scale=4.5)
    kwargs.update(max_sequence_length=T5_LEN, output_type="pt")
    noise = policy.initial_noise(1, torch.Generator().manual_seed(5))
    base = pipe(PROMPTS[1], latents=noise.clone(), **kwargs).images
    pipe.load_lora_weights(str(tmp_path / "lora"))
    loaded = pipe(PROMPTS[1], latents=noise.clone(), **kwargs).images
    x = euler_sample(policy, policy.encode([Prompt(PROMPTS[1])]), noise, pipe.scheduler.sigmas)
    trained = policy.decode(x)
    assert not torch.allclose(base, trained, atol=1e-3)
    torch.testing.assert_close(loaded, trained, atol=1e-4, rtol=1e-4)


def test_lora_default_targets_are_flow_grpos(make_policy):
    """Flow-GRPO's SD3 LoRA: the joint attention's q/k/v/out and added (text) projections; the
    dual-attention block's attn2 stays frozen."""
    policy = make_policy(lora_rank=32, lora_alpha=64.0)
    names = [n for n, p in policy.transformer.named_parameters() if p.requires_grad]
    assert names and all(".attn." in n and "lora_" in n for n in names)
    assert any("add_q_proj" in n for n in names) and any("to_add_out" in n for n in names)
    # The last block keeps no text output: its text queries are dropped, so no adapter there.
    last = policy.transformer.config.num_layers - 1
    assert not any(n.startswith(f"transformer_blocks.{last}.attn.add_q_proj") for n in names)
    assert policy.config.lora_rank == 32 and policy.config.lora_alpha == 64.0


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"height": 40}, ConfigError, "policy.height must be a multiple of 16"),
        ({"lora_targets": []}, ConfigError, "lora_targets is empty"),
        ({"lora_targets": ["no_such_module"]}, ConfigError, "match no SD3 transformer"),
        ({"model": ""}, UsageError, "policy 'sd3' needs a model"),
    ],
)
def test_bad_options_are_one_clear_error(make_policy, overrides, error, message):
    with pytest.raises(error, match=message):
        make_policy(**overrides)


def test_image_prompts_are_refused(make_policy):
    with pytest.raises(UsageError, match="text-to-image"):
        make_policy().encode([Prompt("a cat", image=torch.zeros(3, 8, 8))])


def test_layout_names_what_is_missing_and_refuses_other_models(tiny_sd3, tiny_flux, tmp_path):
    import shutil

    from dance_sd3.layout import resolve_model

    assert resolve_model(str(tiny_sd3)) == tiny_sd3
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd3, broken)
    shutil.rmtree(broken / "text_encoder_3")
    with pytest.raises(ModelLayoutError, match="text_encoder_3/config.json"):
        resolve_model(str(broken))
    with pytest.raises(ModelLayoutError, match="text_encoder_3"):
        resolve_model(str(tiny_flux))


def test_tiny_checkpoint_cli(tmp_path, capsys, tiny_sd3):
    from dance_sd3.tiny import main

    main([str(tmp_path / "cli")])
    assert "wrote a tiny Stable Diffusion 3 checkpoint" in capsys.readouterr().out
    rel = "transformer/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "cli" / rel).read_bytes() == (tiny_sd3 / rel).read_bytes()
