"""What trains, gradients, the reference model, and saving / loading trained weights (LoRA into
FluxPipeline.load_lora_weights, full fine-tunes as a diffusers transformer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dance.config import build
from dance.errors import UsageError
from dance.interfaces import Prompt, Runtime
from dance_flux.policy import FluxConfig, FluxPolicy


def inputs(policy: FluxPolicy, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    latents = policy.initial_noise(2, gen)
    sigmas = torch.rand(2, generator=gen)
    cond = policy.encode([Prompt("a photo of a cat"), Prompt("a red fox in the snow")])
    return latents, sigmas, cond


def transformer_output(transformer, policy: FluxPolicy, latents, sigmas, cond) -> torch.Tensor:
    """A diffusers transformer called by hand as FluxPipeline calls it."""
    with torch.no_grad():
        return transformer(
            hidden_states=latents,
            timestep=sigmas,
            guidance=torch.full((latents.shape[0],), policy.config.guidance),
            pooled_projections=cond["pooled_prompt_embeds"],
            encoder_hidden_states=cond["prompt_embeds"],
            txt_ids=torch.zeros(cond["prompt_embeds"].shape[1], 3),
            img_ids=policy._image_ids(latents.shape[1]),
            return_dict=False,
        )[0]


def targeted_linears(transformer, targets) -> list[torch.nn.Linear]:
    """Linear layers peft wraps: module names equal to or ending in '.' + a target."""
    return [
        m
        for name, m in transformer.named_modules()
        if isinstance(m, torch.nn.Linear) and any(name.endswith("." + t) for t in targets)
    ]


# --- LoRA ---------------------------------------------------------------------------------------


def test_lora_trains_only_adapters(make_policy, pipe) -> None:
    policy = make_policy()
    trainable = policy.trainable_parameters()
    names = {n for n, p in policy.transformer.named_parameters() if p.requires_grad}
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert len(trainable) == len(names)
    assert all(p.dtype == torch.float32 for p in trainable)
    frozen = [p for p in policy.transformer.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == policy.runtime.frozen_dtype for p in frozen)

    layers = targeted_linears(pipe.transformer, policy.config.lora_targets)
    # One double block (q, k, v, out) and one single block (q, k, v; it has no to_out).
    assert len(layers) == 7
    rank = policy.config.lora_rank
    expected = sum(rank * (m.in_features + m.out_features) for m in layers)
    assert sum(p.numel() for p in trainable) == expected


def test_lora_targets_that_match_nothing(make_policy) -> None:
    from dance.errors import ConfigError

    with pytest.raises(ConfigError, match="lora_targets"):
        make_policy(lora_targets=["no_such_module"])


def test_lora_starts_as_the_base_model(make_policy, pipe) -> None:
    policy = make_policy()
    latents, sigmas, cond = inputs(policy)
    base = transformer_output(pipe.transformer, policy, latents, sigmas, cond)
    assert torch.equal(policy.predict(latents, sigmas, cond), base)


def test_gradient_reaches_lora_through_predict(make_policy, perturb) -> None:
    policy = make_policy()
    latents, sigmas, cond = inputs(policy)
    policy.predict(latents, sigmas, cond).square().mean().backward()
    for name, param in policy.transformer.named_parameters():
        if ".lora_B." in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        elif not param.requires_grad:
            assert param.grad is None, name
    # lora_B starts at zero, so lora_A has no gradient until B moves.
    perturb(policy)
    for param in policy.trainable_parameters():
        param.grad = None
    policy.predict(latents, sigmas, cond).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.trainable_parameters())
    assert all(p.grad is None for p in policy.text_encoder_2.parameters())


def test_gradient_checkpointing_gives_the_same_gradients(make_policy, perturb) -> None:
    grads = []
    for checkpointing in (False, True):
        policy = make_policy(gradient_checkpointing=checkpointing)
        assert policy.transformer.gradient_checkpointing is checkpointing
        perturb(policy)
        latents, sigmas, cond = inputs(policy)
        policy.train(True)
        policy.predict(latents, sigmas, cond).square().mean().backward()
        grads.append([p.grad.clone() for p in policy.trainable_parameters()])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, checkpointed)


def test_reference_disables_the_adapters(make_policy, perturb) -> None:
    policy = make_policy()
    latents, sigmas, cond = inputs(policy)
    base = policy.predict(latents, sigmas, cond)
    perturb(policy)
    trained = policy.predict(latents, sigmas, cond)
    assert not torch.allclose(trained, base)
    with policy.reference():
        assert torch.equal(policy.predict(latents, sigmas, cond), base)
        with policy.reference():  # nesting keeps the reference
            assert torch.equal(policy.predict(latents, sigmas, cond), base)
        assert torch.equal(policy.predict(latents, sigmas, cond), base)
    assert torch.equal(policy.predict(latents, sigmas, cond), trained)
    assert all(p.requires_grad for p in policy.trainable_parameters())
    policy.prepare_reference()  # nothing to copy under LoRA
    with policy.reference():
        assert torch.equal(policy.predict(latents, sigmas, cond), base)


def test_lora_saved_loads_into_flux_pipeline(make_policy, perturb, pipe, tmp_path: Path) -> None:
    """The requirement: FluxPipeline.load_lora_weights of what save_trained wrote computes the
    trained policy's output."""
    policy = make_policy()
    perturb(policy)
    latents, sigmas, cond = inputs(policy)
    trained = policy.predict(latents, sigmas, cond)
    policy.save_trained(str(tmp_path / "lora"))
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()

    before = transformer_output(pipe.transformer, policy, latents, sigmas, cond)
    assert not torch.allclose(before, trained)
    pipe.load_lora_weights(str(tmp_path / "lora"))
    after = transformer_output(pipe.transformer, policy, latents, sigmas, cond)
    assert torch.equal(after, trained)


def test_lora_round_trip(make_policy, perturb, tmp_path: Path) -> None:
    policy = make_policy()
    perturb(policy)
    latents, sigmas, cond = inputs(policy)
    trained = policy.predict(latents, sigmas, cond)
    policy.save_trained(str(tmp_path))

    fresh = make_policy()
    params = fresh.trainable_parameters()
    assert not torch.equal(fresh.predict(latents, sigmas, cond), trained)
    fresh.load_trained(str(tmp_path))
    assert torch.equal(fresh.predict(latents, sigmas, cond), trained)
    # Loaded in place: an optimizer built before loading still holds the live parameters.
    assert all(a is b for a, b in zip(params, fresh.trainable_parameters(), strict=True))
    for a, b in zip(policy.trainable_parameters(), params, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lora_rank": 8}, "has shape"),
        ({"lora_targets": ["to_q", "to_v"]}, "unexpected"),
        ({"lora_targets": ["to_q", "to_k", "to_v", "to_out.0", "proj_out"]}, "missing"),
        ({"lora_alpha": 4.0}, "lora_alpha=8.0"),
        ({"finetune": "full"}, "finetune=lora"),
    ],
)
def test_lora_mismatch_is_refused(make_policy, tmp_path: Path, overrides, message) -> None:
    make_policy().save_trained(str(tmp_path))
    other = make_policy(**overrides)
    with pytest.raises(UsageError, match=message):
        other.load_trained(str(tmp_path))


def test_foreign_lora_keys_are_refused(make_policy, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    policy = make_policy()
    policy.save_trained(str(tmp_path))
    file = tmp_path / "pytorch_lora_weights.safetensors"
    state = load_file(str(file))
    state["text_encoder.foo.lora_A.weight"] = torch.zeros(1)
    save_file(state, str(file))
    with pytest.raises(UsageError, match="outside the transformer"):
        policy.load_trained(str(tmp_path))


def test_load_from_an_empty_directory(make_policy, tmp_path: Path) -> None:
    for finetune in ("lora", "full"):
        with pytest.raises(UsageError, match="no trained FLUX weights") as info:
            make_policy(finetune=finetune).load_trained(str(tmp_path))
        assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_saved_lora_carries_its_config(make_policy, tmp_path: Path) -> None:
    from safetensors import safe_open

    make_policy().save_trained(str(tmp_path))
    with safe_open(str(tmp_path / "pytorch_lora_weights.safetensors"), framework="pt") as f:
        metadata = json.loads(f.metadata()["lora_adapter_metadata"])
        keys = list(f.keys())  # noqa: SIM118
    assert metadata["transformer.lora_alpha"] == 8.0 and metadata["transformer.r"] == 4
    assert all(k.startswith("transformer.") and ".lora_" in k for k in keys)
    assert not any("base_layer" in k or ".default." in k for k in keys)


# --- full fine-tune -----------------------------------------------------------------------------


def test_full_finetune_trains_the_whole_transformer(make_policy) -> None:
    policy = make_policy(finetune="full")
    trainable = policy.trainable_parameters()
    everything = list(policy.transformer.parameters())
    assert len(trainable) == len(everything)
    assert all(p.requires_grad and p.dtype == torch.float32 for p in everything)
    assert not any(".lora_" in n for n, _ in policy.transformer.named_parameters())
    latents, sigmas, cond = inputs(policy)
    policy.predict(latents, sigmas, cond).square().mean().backward()
    assert all(p.grad is not None for p in trainable)


def test_full_round_trip_and_diffusers_loading(make_policy, perturb, tmp_path: Path) -> None:
    from diffusers import FluxTransformer2DModel

    policy = make_policy(finetune="full")
    perturb(policy, std=0.02)
    latents, sigmas, cond = inputs(policy)
    trained = policy.predict(latents, sigmas, cond)
    policy.save_trained(str(tmp_path))

    loaded = FluxTransformer2DModel.from_pretrained(tmp_path / "transformer")
    assert torch.equal(transformer_output(loaded, policy, latents, sigmas, cond), trained)

    fresh = make_policy(finetune="full")
    assert not torch.equal(fresh.predict(latents, sigmas, cond), trained)
    fresh.load_trained(str(tmp_path))
    for (name, a), b in zip(
        policy.transformer.state_dict().items(),
        fresh.transformer.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b), name
    assert torch.equal(fresh.predict(latents, sigmas, cond), trained)


def test_full_load_refuses_incomplete_weights(make_policy, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    policy = make_policy(finetune="full")
    policy.save_trained(str(tmp_path))
    file = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(file))
    dropped = sorted(state)[0]
    del state[dropped]
    save_file(state, str(file))
    with pytest.raises(UsageError, match=f"1 missing \\(e.g. {dropped}\\)"):
        policy.load_trained(str(tmp_path))
    with pytest.raises(UsageError, match="finetune=full"):
        make_policy().load_trained(str(tmp_path))


def test_full_reference_needs_prepare(make_policy, perturb) -> None:
    policy = make_policy(finetune="full")
    latents, sigmas, cond = inputs(policy)
    with pytest.raises(RuntimeError, match="prepare_reference"), policy.reference():
        pass
    base = policy.predict(latents, sigmas, cond)
    policy.prepare_reference()
    perturb(policy, std=0.02)
    trained = policy.predict(latents, sigmas, cond)
    assert not torch.allclose(trained, base)
    with policy.reference():
        assert torch.equal(policy.predict(latents, sigmas, cond), base)
    assert torch.equal(policy.predict(latents, sigmas, cond), trained)
    reference = policy._reference_model
    assert reference is not None and reference is not policy.transformer
    assert not any(p.requires_grad for p in reference.parameters())


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_bf16_frozen_weights_on_cpu(tiny_flux: Path, make_policy, finetune: str) -> None:
    """Frozen parts (and the full fine-tune's frozen reference) in bf16 next to fp32 training."""
    values = {"model": str(tiny_flux), "height": 32, "width": 32, "max_sequence_length": 16}
    config = build(FluxConfig, {**values, "finetune": finetune, "lora_rank": 4})
    policy = FluxPolicy(config, Runtime(frozen_dtype=torch.bfloat16))
    assert policy.text_encoder_2.dtype == torch.bfloat16 and policy.vae.dtype == torch.bfloat16
    assert {p.dtype for p in policy.trainable_parameters()} == {torch.float32}
    expected = make_policy(finetune=finetune, lora_rank=4)
    latents, sigmas, cond = inputs(expected)
    reference = expected.predict(latents, sigmas, cond)
    policy.prepare_reference()
    out = policy.predict(
        latents,
        sigmas,
        policy.encode([Prompt("a photo of a cat"), Prompt("a red fox in the snow")]),
    )
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference, rtol=0.1, atol=0.1)
    with policy.reference():
        ref = policy.predict(latents, sigmas, cond)
    assert ref.dtype == torch.float32
    torch.testing.assert_close(ref, reference, rtol=0.1, atol=0.1)
    out.square().mean().backward()
    assert all(p.grad is not None for p in policy.trainable_parameters())
