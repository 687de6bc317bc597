"""Trained weights: what save_trained writes loads back into StableDiffusionPipeline and into the
policy, and every mismatch is one clear error."""

from __future__ import annotations

import pytest
import torch

from dance.errors import UsageError
from dance.interfaces import Prompt

PROMPTS = ["a red cat on the left", "two blue squares"]


def guided_unet(pipe, unet, x, t, scale=5.0):
    """The pipeline's guided noise prediction, by hand, with ``unet``."""
    embeds, negative = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    eps = unet(
        torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([negative, embeds])
    ).sample
    eps_uncond, eps_cond = eps.chunk(2)
    return eps_uncond + scale * (eps_cond - eps_uncond)


def inputs(policy):
    x = policy.initial_noise(2, torch.Generator().manual_seed(0))
    return x, torch.tensor([761, 261]), policy.encode([Prompt(p) for p in PROMPTS])


def test_lora_loads_into_the_pipeline_and_reproduces_the_policy(
    make_policy, perturb, pipe, tmp_path
):
    policy = make_policy()
    perturb(policy)
    policy.save_trained(str(tmp_path))
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()
    x, t, cond = inputs(policy)
    with torch.no_grad():
        expected = policy.predict(x, t, cond)
        before = guided_unet(pipe, pipe.unet, x, t)
        pipe.load_lora_weights(tmp_path)
        got = guided_unet(pipe, pipe.unet, x, t)
    assert not torch.allclose(before, expected, atol=1e-3)
    # Equal only if diffusers read alpha = 8 from the metadata (alpha = rank would halve LoRA).
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_full_finetune_saves_a_unet_the_pipeline_loads(make_policy, perturb, pipe, tmp_path):
    from diffusers import UNet2DConditionModel

    policy = make_policy(finetune="full")
    perturb(policy, std=0.01)
    policy.save_trained(str(tmp_path))
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet", local_files_only=True)
    x, t, cond = inputs(policy)
    with torch.no_grad():
        torch.testing.assert_close(
            guided_unet(pipe, unet, x, t), policy.predict(x, t, cond), atol=1e-5, rtol=1e-4
        )
    loaded = make_policy(finetune="full")
    loaded.load_trained(str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict(x, t, cond), policy.predict(x, t, cond))


def test_full_finetune_reference_is_the_copy_made_before_training(make_policy, perturb):
    policy = make_policy(finetune="full")
    with pytest.raises(RuntimeError, match="prepare_reference"), policy.reference():
        pass
    policy.prepare_reference()
    x, t, cond = inputs(policy)
    with torch.no_grad():
        base = policy.predict(x, t, cond)
        perturb(policy, std=0.01)
        with policy.reference():
            reference = policy.predict(x, t, cond)
    torch.testing.assert_close(reference, base, atol=1e-5, rtol=1e-4)
    assert not any(p.requires_grad for p in policy._reference_model.parameters())


def test_lora_reference_disables_the_adapters_and_keeps_what_trains(make_policy, perturb):
    policy = make_policy()
    perturb(policy)
    trainable = policy.trainable_parameters()
    x, t, cond = inputs(policy)
    base = make_policy()
    with torch.no_grad(), policy.reference():
        torch.testing.assert_close(policy.predict(x, t, cond), base.predict(x, t, cond))
    assert all(p.requires_grad for p in trainable)


def test_mismatched_trained_weights_are_refused(make_policy, perturb, tmp_path):
    lora = make_policy()
    lora.save_trained(str(tmp_path / "lora"))
    with pytest.raises(UsageError, match="a different lora_rank"):
        make_policy(lora_rank=2).load_trained(str(tmp_path / "lora"))
    with pytest.raises(UsageError, match=r"trained with lora_alpha=8\.0"):
        make_policy(lora_alpha=16.0).load_trained(str(tmp_path / "lora"))
    with pytest.raises(UsageError, match=r"\d+ missing"):
        make_policy(lora_targets=["to_q", "to_k", "to_v", "to_out.0", "proj_in"]).load_trained(
            str(tmp_path / "lora")
        )
    with pytest.raises(UsageError, match="set policy.finetune=lora"):
        make_policy(finetune="full").load_trained(str(tmp_path / "lora"))
    full = make_policy(finetune="full")
    full.save_trained(str(tmp_path / "full"))
    with pytest.raises(UsageError, match="set policy.finetune=full"):
        make_policy().load_trained(str(tmp_path / "full"))
    with pytest.raises(UsageError, match="no trained Stable Diffusion weights"):
        make_policy().load_trained(str(tmp_path / "empty"))


def test_lora_of_another_component_is_refused(make_policy, tmp_path):
    from safetensors.torch import save_file

    tmp_path.mkdir(exist_ok=True)
    save_file(
        {"text_encoder.layer.lora_A.weight": torch.zeros(2, 2)},
        str(tmp_path / "pytorch_lora_weights.safetensors"),
    )
    with pytest.raises(UsageError, match="outside the UNet"):
        make_policy().load_trained(str(tmp_path))
