"""The wan-t2v policy against diffusers' WanPipeline on tiny random checkpoints (Wan2.1 T2V, Wan2.2
TI2V-5B as text-to-video, Wan2.2 T2V-A14B): prompt encoding, guidance, experts, decoding, sampling
end to end, LoRA weights loading back into the pipeline."""

from __future__ import annotations

import pytest
import torch
from wan_helpers import (
    BOUNDARY,
    FRAMES,
    SIZE,
    TEXT_LEN,
    TEXTS,
    TI2V_SIZE,
    assert_pipeline_video,
    guided_by_hand,
    load_pipeline,
    ode_video,
)

from dance.errors import ConfigError, UsageError
from dance.interfaces import Prompt, Runtime
from dance_wan.experts import expert_of_sigmas
from dance_wan.prompting import DEFAULT_NEGATIVE_PROMPT


@pytest.fixture
def t2v_pipe(tiny_wan):  # noqa: ANN001, ANN201
    from diffusers import WanPipeline

    return load_pipeline(WanPipeline, tiny_wan)


def test_loads_every_component_frozen_and_declares_its_blocks(make_t2v) -> None:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock
    from transformers import UMT5EncoderModel

    policy = make_t2v()
    assert isinstance(policy.text_encoder, UMT5EncoderModel)
    assert isinstance(policy.vae, AutoencoderKLWan) and policy.vae.use_tiling
    assert isinstance(policy.transformer, WanTransformer3DModel)
    assert type(policy).block_classes == (WanTransformerBlock,)
    for module in (policy.text_encoder, policy.vae):
        assert not any(p.requires_grad for p in module.parameters())
    trainable = policy.trainable_parameters()
    assert trainable and all(".lora_" in n for n, p in policy.transformer.named_parameters()
                             if p.requires_grad)  # fmt: skip


def test_encode_matches_encode_prompt(make_t2v, t2v_pipe) -> None:
    """Cleaning (HTML entities, whitespace), padding, zeroed states past the prompt, and the
    negative prompt: the pipeline's encode_prompt."""
    policy = make_t2v()
    texts = [*TEXTS, "a  cat &amp;amp; a\n dog"]
    cond = policy.encode([Prompt(t) for t in texts])
    with torch.no_grad():
        positive, negative = t2v_pipe.encode_prompt(
            texts,
            negative_prompt=[DEFAULT_NEGATIVE_PROMPT] * 3,
            max_sequence_length=TEXT_LEN,
        )
    torch.testing.assert_close(cond["prompt_embeds"], positive, atol=1e-6, rtol=0)
    torch.testing.assert_close(policy.negative_embeds(), negative[:1], atol=1e-6, rtol=0)
    assert not cond["prompt_embeds"][0, -1].any()  # a short prompt: zeros after its tokens


def test_encode_caches_each_prompt_once(make_t2v) -> None:
    policy = make_t2v(prompt_cache_size=2)
    calls = []
    original = policy._encode_texts

    def counting(texts):  # noqa: ANN001, ANN202
        calls.append(list(texts))
        return original(texts)

    policy.negative_embeds()  # encoded once, with the first prompts
    policy._encode_texts = counting
    first = policy.encode([Prompt("a cat"), Prompt("a dog"), Prompt("a cat")])
    again = policy.encode([Prompt("a dog")])
    assert calls == [["a cat", "a dog"]]
    torch.testing.assert_close(first["prompt_embeds"][1], again["prompt_embeds"][0])
    policy.encode([Prompt("a fox")])  # evicts "a cat", the least recently read
    policy.encode([Prompt("a cat")])
    assert calls[-1] == ["a cat"]


def test_encode_refuses_images_and_bad_configs(make_t2v, make_ti2v) -> None:
    with pytest.raises(UsageError, match="text-to-video"):
        make_t2v().encode([Prompt("a cat", image=torch.zeros(3, 8, 8))])
    with pytest.raises(ConfigError, match="4k\\+1"):
        make_t2v(num_frames=6)
    with pytest.raises(ConfigError, match="multiples of 32"):
        make_ti2v(height=48, width=48)  # 16x VAE x patch 2


def test_a_checkpoint_is_needed_and_the_kind_is_checked(tiny_wan_i2v) -> None:
    from dance.config import build
    from dance.errors import ModelLayoutError
    from dance_wan import WanT2VConfig, WanT2VPolicy

    with pytest.raises(UsageError, match="needs a model"):
        WanT2VPolicy(build(WanT2VConfig, {}, prefix="policy."), Runtime())
    with pytest.raises(ModelLayoutError, match="wan-i2v"):
        WanT2VPolicy(build(WanT2VConfig, {"model": str(tiny_wan_i2v)}, prefix="policy."), Runtime())


def test_initial_noise_matches_prepare_latents(make_t2v, t2v_pipe) -> None:
    noise = make_t2v().initial_noise(2, torch.Generator().manual_seed(7))
    expected = t2v_pipe.prepare_latents(
        2, 4, SIZE, SIZE, FRAMES, torch.float32, torch.device("cpu"),
        torch.Generator().manual_seed(7),
    )  # fmt: skip
    assert noise.shape == (2, 4, 2, 4, 4)
    torch.testing.assert_close(noise, expected, atol=0, rtol=0)


def test_predict_is_the_pipelines_guided_velocity(make_t2v, t2v_pipe) -> None:
    policy = make_t2v(cfg_scale=4.0)
    policy.train(False)
    cond = policy.encode([Prompt(t) for t in TEXTS])
    latents = policy.initial_noise(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = policy.predict(latents, torch.tensor([0.7, 0.7]), cond)
        negative = policy.negative_embeds().expand(2, -1, -1)
        expected = guided_by_hand(
            t2v_pipe.transformer, latents, 0.7, cond["prompt_embeds"], negative, 4.0
        )
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_decode_matches_the_pipeline_output_stage(make_t2v, t2v_pipe) -> None:
    policy = make_t2v()
    latents = policy.initial_noise(2, torch.Generator().manual_seed(3))
    video = policy.decode(latents)
    vae = t2v_pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        decoded = vae.decode(latents * std + mean, return_dict=False)[0]
    expected = t2v_pipe.video_processor.postprocess_video(decoded, output_type="pt")
    assert video.shape == (2, 3, FRAMES, SIZE, SIZE)
    torch.testing.assert_close(video, expected.permute(0, 2, 1, 3, 4), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["t2v", "a14b", "ti2v"])
def test_ode_sampling_reproduces_the_pipeline(
    kind, make_t2v, make_a14b, make_ti2v, tiny_wan, tiny_wan_a14b, tiny_wan_ti2v
) -> None:
    """policy + ode sampler + decode against WanPipeline.__call__ with its Euler scheduler at the
    same shift and steps, from the same initial latents, with the same negative prompt and scale:
    Wan2.1, A14B switching experts at its boundary (sigmas 1, 0.86, 0.6 around 0.95), TI2V-5B's
    per-token timesteps."""
    from diffusers import WanPipeline

    make, path = {"t2v": (make_t2v, tiny_wan), "a14b": (make_a14b, tiny_wan_a14b),
                  "ti2v": (make_ti2v, tiny_wan_ti2v)}[kind]  # fmt: skip
    size = TI2V_SIZE if kind == "ti2v" else SIZE
    policy = make(cfg_scale=3.0, cfg_scale_2=2.0) if kind == "a14b" else make(cfg_scale=3.0)
    x = policy.initial_noise(1, torch.Generator().manual_seed(5))
    video = ode_video(policy, Prompt(TEXTS[0]), x)
    pipe = load_pipeline(WanPipeline, path)
    extra = {"guidance_scale_2": 2.0} if kind == "a14b" else {}
    assert_pipeline_video(pipe, video, x, size, prompt=TEXTS[0], **extra)


def test_each_sigma_goes_to_the_expert_the_pipeline_picks() -> None:
    sigmas = torch.tensor([1.0, 0.875, 0.8749, 0.2])
    assert expert_of_sigmas(sigmas, 0.875).tolist() == [0, 0, 1, 1]
    assert expert_of_sigmas(sigmas, None).tolist() == [0, 0, 0, 0]


def test_the_docs_expert_split_of_the_recipe_schedule() -> None:
    """docs/models/wan.md: 10 steps at shift 3 with A14B T2V's 0.875 give steps 0-3 to
    transformer and 4-9 to transformer_2, as the pipeline's t >= boundary_ratio * 1000 with
    t = sigma * 1000 decides."""
    from dance_flow_samplers.schedule import flow_schedule

    sigmas = flow_schedule(10, 3.0).timesteps
    pipeline = [0 if t >= 0.875 * 1000 else 1 for t in (sigmas * 1000).tolist()]
    assert expert_of_sigmas(sigmas, 0.875).tolist() == pipeline == [0] * 4 + [1] * 6


def test_a_batch_mixing_experts_is_each_samples_own_expert(make_a14b) -> None:
    policy = make_a14b()
    policy.train(False)
    cond = policy.encode([Prompt(t) for t in TEXTS])
    latents = policy.initial_noise(2, torch.Generator().manual_seed(1))
    t = torch.tensor([1.0, BOUNDARY / 2])
    with torch.no_grad():
        mixed = policy.predict(latents, t, cond)
        high = policy.predict(latents[:1], t[:1], cond.select(torch.tensor([0])))
        low = policy.predict(latents[1:], t[1:], cond.select(torch.tensor([1])))
        # The low-noise row really ran transformer_2: transformer gives something else.
        policy.checkpoint = type(policy.checkpoint)(**{**vars(policy.checkpoint),
                                                      "boundary_ratio": None})  # fmt: skip
        wrong = policy.predict(latents[1:], t[1:], cond.select(torch.tensor([1])))
    torch.testing.assert_close(mixed, torch.cat([high, low]), atol=1e-6, rtol=0)
    assert not torch.allclose(low, wrong, atol=1e-3)


def test_under_several_ranks_every_trained_expert_runs_in_every_call(make_a14b) -> None:
    """FSDP needs every rank to call the same sharded experts: with world_size > 1 a batch of
    high-noise steps still runs transformer_2 (weighted 0), and the result is unchanged."""
    policy = make_a14b()
    policy.train(False)
    cond = policy.encode([Prompt(t) for t in TEXTS])
    latents = policy.initial_noise(2, torch.Generator().manual_seed(1))
    t = torch.tensor([1.0, 1.0])
    calls = []
    for name in ("transformer", "transformer_2"):
        getattr(policy, name).register_forward_hook(lambda *_, n=name: calls.append(n))
    alone = policy.predict(latents, t, cond)
    assert calls == ["transformer"]
    policy.runtime.world_size = 2
    calls.clear()
    in_step = policy.predict(latents, t, cond)
    assert calls == ["transformer", "transformer_2"]
    torch.testing.assert_close(in_step, alone, atol=0, rtol=0)
    in_step.square().mean().backward()
    low = [p for n, p in policy.transformer_2.named_parameters() if p.requires_grad]
    assert all(p.grad is not None and not p.grad.any() for p in low)


def _pipeline_velocity(pipe, transformer, policy, latents, sigma):  # noqa: ANN001, ANN202
    cond = policy.encode([Prompt(TEXTS[0])])
    with torch.no_grad():
        return guided_by_hand(
            transformer, latents, sigma, cond["prompt_embeds"], policy.negative_embeds(), 5.0
        )


def test_lora_weights_load_into_the_pipeline(make_t2v, t2v_pipe, perturb, tmp_path) -> None:
    policy = make_t2v()
    perturb(policy)
    policy.save_trained(str(tmp_path))
    policy.train(False)
    latents = policy.initial_noise(1, torch.Generator().manual_seed(2))
    with torch.no_grad():
        trained = policy.predict(latents, torch.tensor([0.6]), policy.encode([Prompt(TEXTS[0])]))
    base = _pipeline_velocity(t2v_pipe, t2v_pipe.transformer, policy, latents, 0.6)
    t2v_pipe.load_lora_weights(str(tmp_path))
    loaded = _pipeline_velocity(t2v_pipe, t2v_pipe.transformer, policy, latents, 0.6)
    assert not torch.allclose(trained, base, atol=1e-3)
    torch.testing.assert_close(loaded, trained, atol=1e-5, rtol=1e-5)


def test_a14b_lora_of_both_experts_loads_into_the_pipeline(
    make_a14b, tiny_wan_a14b, perturb, tmp_path
) -> None:
    """transformer's LoRA at the top, transformer_2's under transformer_2/ (loaded with
    load_into_transformer_2=True); each reproduces its expert."""
    from diffusers import WanPipeline

    policy = make_a14b()
    assert len(policy.trainable_modules()) == 2
    perturb(policy)
    policy.save_trained(str(tmp_path))
    assert (tmp_path / "transformer_2" / "pytorch_lora_weights.safetensors").is_file()
    pipe = load_pipeline(WanPipeline, tiny_wan_a14b)
    pipe.load_lora_weights(str(tmp_path))
    pipe.load_lora_weights(str(tmp_path / "transformer_2"), load_into_transformer_2=True)
    policy.train(False)
    latents = policy.initial_noise(1, torch.Generator().manual_seed(2))
    cond = policy.encode([Prompt(TEXTS[0])])
    for sigma, transformer in ((1.0, pipe.transformer), (0.5, pipe.transformer_2)):
        with torch.no_grad():
            trained = policy.predict(latents, torch.tensor([sigma]), cond)
        loaded = _pipeline_velocity(pipe, transformer, policy, latents, sigma)
        torch.testing.assert_close(loaded, trained, atol=1e-5, rtol=1e-5)
    # The round trip through load_trained too.
    again = make_a14b()
    again.load_trained(str(tmp_path))
    for a, b in zip(policy.trainable_parameters(), again.trainable_parameters(), strict=True):
        assert torch.equal(a, b)


def test_one_expert_can_train_alone(make_a14b, tmp_path) -> None:
    policy = make_a14b(experts="low")
    assert not any(p.requires_grad for p in policy.transformer.parameters())
    assert policy.trainable_modules() == [policy.transformer_2]
    policy.save_trained(str(tmp_path))
    assert not (tmp_path / "pytorch_lora_weights.safetensors").exists()
    assert (tmp_path / "transformer_2" / "pytorch_lora_weights.safetensors").is_file()


def test_full_finetune_round_trip(make_t2v, tmp_path) -> None:
    policy = make_t2v(finetune="full")
    assert len(policy.trainable_parameters()) == len(list(policy.transformer.parameters()))
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.01)
    policy.save_trained(str(tmp_path))
    loaded = make_t2v(finetune="full")
    loaded.load_trained(str(tmp_path))
    for a, b in zip(policy.trainable_parameters(), loaded.trainable_parameters(), strict=True):
        assert torch.equal(a, b)
