"""The qwen-image policy computes what diffusers' QwenImagePipeline computes from the same inputs,
and its trained LoRA loads back into the pipeline."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from dance.errors import ConfigError, ModelLayoutError, UsageError
from dance.interfaces import Prompt
from dance.testing.pipeline_reference import euler_sample

PROMPTS = ["a red cat on the left", "two blue squares"]
SIZE, TEXT_LEN = 32, 24  # the make_policy fixture's image size and prompt length
TOKENS, PACKED = 16, 64  # 32x32 -> 8x8 latent of 16 channels -> 4x4 tokens of 2x2x16
CFG = 4.0


def pipeline_embeddings(pipe, texts, length=TEXT_LEN):
    """(embeddings, mask) as QwenImagePipeline.encode_prompt computes them, gradients off as in
    its __call__; the mask is None when every token is real."""
    with torch.no_grad():
        return pipe.encode_prompt(texts, device=torch.device("cpu"), max_sequence_length=length)


def pipeline_kwargs(**extra):
    kwargs = dict(height=SIZE, width=SIZE, num_inference_steps=3, output_type="pt")
    kwargs.update(negative_prompt=" ", true_cfg_scale=CFG, max_sequence_length=TEXT_LEN)
    return {**kwargs, **extra}


def test_loads_every_component_frozen(make_policy):
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

    policy = make_policy()
    assert (policy.name, policy.modality, policy.prediction_type) == ("qwen-image", "image", "flow")
    assert isinstance(policy.tokenizer, Qwen2Tokenizer)
    assert isinstance(policy.text_encoder, Qwen2_5_VLForConditionalGeneration)
    assert isinstance(policy.vae, AutoencoderKLQwenImage)
    assert isinstance(policy.transformer, QwenImageTransformer2DModel)
    for module in (policy.text_encoder, policy.vae):
        assert not any(p.requires_grad for p in module.parameters())
    assert policy.trainable_modules() == [policy.transformer]
    blocks = [m for m in policy.transformer.modules() if isinstance(m, policy.block_classes)]
    assert len(blocks) == policy.transformer.config.num_layers == 2
    assert policy.latent_shape == (TOKENS, PACKED)


def test_the_template_system_part_is_dropped(make_policy, pipe):
    """The tiny tokenizer cuts the template's system part into the 34 tokens the pipeline drops,
    as Qwen's tokenizer does; what remains is the prompt's own tokens and the template's tail."""
    policy = make_policy()
    template = pipe.prompt_template_encode
    assert len(policy.tokenizer(template.split("{}")[0]).input_ids) == 34
    assert pipe.prompt_template_encode_start_idx == 34
    full = len(policy.tokenizer(template.format(PROMPTS[0])).input_ids)
    cond = policy.encode([Prompt(PROMPTS[0])])
    assert int(cond["prompt_embeds_mask"].sum()) == full - 34


def test_encode_matches_the_pipeline(make_policy, pipe, caplog):
    policy = make_policy()
    long_prompt = " ".join(["a photo of a cat wearing a golden hat"] * 4)  # > TEXT_LEN tokens
    texts = [*PROMPTS, long_prompt]
    with caplog.at_level(logging.WARNING):
        cond = policy.encode([Prompt(t) for t in texts])
    assert "truncates prompts to policy.max_sequence_length = 24" in caplog.text
    embeds, mask = pipeline_embeddings(pipe, texts)
    assert cond["prompt_embeds"].shape == (3, TEXT_LEN, 32)
    assert embeds.shape[1] == TEXT_LEN  # the long prompt fills it
    torch.testing.assert_close(cond["prompt_embeds"], embeds, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cond["prompt_embeds_mask"], mask, atol=0, rtol=0)
    # Shorter prompts alone: the pipeline pads to the longest of them; the policy pads to
    # TEXT_LEN (a prompt's row is the same in any batch) and predict cuts. The real tokens and
    # the mask are the pipeline's, zeros after them.
    short, short_mask = pipeline_embeddings(pipe, PROMPTS)
    n = short.shape[1]
    assert n < TEXT_LEN
    torch.testing.assert_close(cond["prompt_embeds"][:2, :n], short, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cond["prompt_embeds_mask"][:2, :n], short_mask, atol=0, rtol=0)
    assert not cond["prompt_embeds_mask"][:2, n:].any()
    assert not cond["prompt_embeds"][:2, n:].any()
    # The negative branch is the pipeline's encoding of " ".
    negative, negative_mask = pipeline_embeddings(pipe, [" "])
    uncond = policy.negative_conditioning()
    assert negative_mask is None  # one prompt: no padding
    used = int(uncond["prompt_embeds_mask"].sum())
    torch.testing.assert_close(uncond["prompt_embeds"][:, :used], negative, atol=1e-6, rtol=1e-5)


def test_predict_is_true_cfg_with_the_pipelines_norm_rescale(make_policy, pipe):
    """Two transformer calls at timestep sigma (cond, negative), v_n + 4 (v_c - v_n), each token
    rescaled to |v_c|, at a different sigma per sample."""
    policy = make_policy()
    assert policy.config.true_cfg_scale == CFG
    x = policy.initial_noise(2, torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.9, 0.3])
    img_shapes = [[(1, 4, 4)]] * 2
    with torch.no_grad():
        got = policy.predict(x, sigmas, policy.encode([Prompt(p) for p in PROMPTS]))
        embeds, mask = pipeline_embeddings(pipe, PROMPTS)
        negative, _ = pipeline_embeddings(pipe, [" "])
        call = dict(hidden_states=x, timestep=sigmas, img_shapes=img_shapes, return_dict=False)
        v_c = pipe.transformer(
            encoder_hidden_states=embeds, encoder_hidden_states_mask=mask, **call
        )
        v_n = pipe.transformer(encoder_hidden_states=negative.expand(2, -1, -1), **call)
    v_c, v_n = v_c[0], v_n[0]
    guided = v_n + CFG * (v_c - v_n)
    expected = guided * v_c.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True)
    assert got.shape == (2, TOKENS, PACKED) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, v_c, atol=1e-3)  # guidance changed something


def test_gradient_checkpointing_gives_the_same_gradients(make_policy, perturb):
    """policy.gradient_checkpointing recomputes the blocks (masked text included) exactly."""
    grads = []
    for checkpointing in (False, True):
        policy = make_policy(gradient_checkpointing=checkpointing, true_cfg_scale=1.0)
        perturb(policy)
        policy.train(True)
        assert policy.transformer.is_gradient_checkpointing == checkpointing
        x = policy.initial_noise(2, torch.Generator().manual_seed(2))
        cond = policy.encode([Prompt(p) for p in PROMPTS])
        policy.predict(x, torch.tensor([0.7, 0.4]), cond).square().mean().backward()
        grads.append([p.grad.clone() for p in policy.trainable_parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_cfg_scale_one_is_a_single_conditional_pass(make_policy):
    policy = make_policy(true_cfg_scale=1.0)
    calls = []
    policy.transformer.register_forward_hook(
        lambda m, args, kwargs, out: calls.append(kwargs["hidden_states"].shape[0]),
        with_kwargs=True,
    )
    x = policy.initial_noise(1, torch.Generator().manual_seed(1))
    with torch.no_grad():
        policy.predict(x, torch.tensor([0.5]), policy.encode([Prompt(PROMPTS[0])]))
    assert calls == [1]


def test_initial_noise_is_the_pipelines_packed_latents(make_policy, pipe):
    policy = make_policy(height=48, width=32)
    noise = policy.initial_noise(3, torch.Generator().manual_seed(0))
    assert noise.shape == (3, 6 * 4, 64) and noise.dtype == torch.float32
    latents = pipe.prepare_latents(
        3, 16, 48, 32, torch.float32, "cpu", torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(noise, latents, atol=0, rtol=0)


def test_sampling_and_decode_reproduce_the_pipeline(make_policy, pipe):
    """An Euler loop over policy.predict, decoded, is the pipeline's image (true CFG 4)."""
    policy = make_policy()
    noise = policy.initial_noise(1, torch.Generator().manual_seed(3))
    expected = pipe(PROMPTS[0], latents=noise.clone(), **pipeline_kwargs()).images
    sigmas = pipe.scheduler.sigmas  # [1, ..., 0] with the checkpoint's dynamic shift
    x = euler_sample(policy, policy.encode([Prompt(PROMPTS[0])]), noise, sigmas)
    images = policy.decode(x)
    assert images.shape == (1, 3, SIZE, SIZE) and images.dtype == torch.float32
    torch.testing.assert_close(images, expected, atol=1e-4, rtol=1e-4)


def test_lora_loads_into_the_pipeline_and_reproduces_the_trained_model(
    make_policy, perturb, pipe, tmp_path: Path
):
    """The requirement: QwenImagePipeline.load_lora_weights of what save_trained wrote generates
    the trained policy's image."""
    policy = make_policy()
    perturb(policy, std=0.3)
    policy.save_trained(str(tmp_path / "lora"))
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    noise = policy.initial_noise(1, torch.Generator().manual_seed(5))
    base = pipe(PROMPTS[1], latents=noise.clone(), **pipeline_kwargs()).images
    pipe.load_lora_weights(str(tmp_path / "lora"))
    loaded = pipe(PROMPTS[1], latents=noise.clone(), **pipeline_kwargs()).images
    x = euler_sample(policy, policy.encode([Prompt(PROMPTS[1])]), noise, pipe.scheduler.sigmas)
    trained = policy.decode(x)
    assert not torch.allclose(base, trained, atol=1e-3)
    torch.testing.assert_close(loaded, trained, atol=1e-4, rtol=1e-4)


def test_lora_skips_the_last_blocks_unused_text_outputs(make_policy):
    """Every joint-attention projection gets an adapter, except the last block's text query and
    text output: the transformer discards that block's text stream."""
    policy = make_policy()
    names = [n for n, p in policy.transformer.named_parameters() if p.requires_grad]
    assert names and all(".attn." in n and "lora_" in n for n in names)
    assert any(n.startswith("transformer_blocks.0.attn.to_add_out") for n in names)
    assert any(n.startswith("transformer_blocks.1.attn.add_k_proj") for n in names)
    for dead in ("add_q_proj", "to_add_out"):
        assert not any(n.startswith(f"transformer_blocks.1.attn.{dead}") for n in names)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"height": 40}, ConfigError, "policy.height must be a multiple of 16"),
        ({"max_sequence_length": 2000}, ConfigError, "max_sequence_length"),
        ({"lora_targets": []}, ConfigError, "lora_targets is empty"),
        ({"lora_targets": ["no_such_module"]}, ConfigError, "match no Qwen-Image transformer"),
        ({"model": ""}, UsageError, "policy 'qwen-image' needs a model"),
    ],
)
def test_bad_options_are_one_clear_error(make_policy, overrides, error, message):
    with pytest.raises(error, match=message):
        make_policy(**overrides)


def test_image_prompts_are_refused(make_policy):
    with pytest.raises(UsageError, match="text-to-image"):
        make_policy().encode([Prompt("a cat", image=torch.zeros(3, 8, 8))])


def test_layout_names_what_is_missing_and_refuses_other_models(
    tiny_qwen_image, tiny_flux, tmp_path
):
    from dance_qwen_image.layout import resolve_model

    assert resolve_model(str(tiny_qwen_image)) == tiny_qwen_image
    broken = tmp_path / "broken"
    shutil.copytree(tiny_qwen_image, broken)
    shutil.rmtree(broken / "text_encoder")
    with pytest.raises(ModelLayoutError, match="text_encoder/config.json"):
        resolve_model(str(broken))
    with pytest.raises(ModelLayoutError, match="QwenImageTransformer2DModel"):
        resolve_model(str(tiny_flux))


def test_tiny_checkpoint_cli(tmp_path, capsys, tiny_qwen_image):
    from dance_qwen_image.tiny import main

    main([str(tmp_path / "cli")])
    assert "wrote a tiny Qwen-Image checkpoint" in capsys.readouterr().out
    rel = "transformer/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "cli" / rel).read_bytes() == (tiny_qwen_image / rel).read_bytes()
