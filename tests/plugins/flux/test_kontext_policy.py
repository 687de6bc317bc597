"""The flux-kontext policy against diffusers' FluxKontextPipeline on a tiny random checkpoint:
source-image latents and position ids, the working size, prediction and sampling end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from kontext_helpers import SIZE, source_image

from dance.errors import UsageError
from dance.interfaces import Prompt

PROMPT = "make the sky red"


def pipeline_image(pipe, image: torch.Tensor) -> torch.Tensor:
    """Step 3 of FluxKontextPipeline.__call__ with _auto_resize=False: the image's own size
    floored to a multiple of 16, resized and mapped to [-1, 1]."""
    batch = image[None]
    height, width = pipe.image_processor.get_default_height_width(batch)
    multiple = pipe.vae_scale_factor * 2
    height, width = height // multiple * multiple, width // multiple * multiple
    batch = pipe.image_processor.resize(batch, height, width)
    return pipe.image_processor.preprocess(batch, height, width)


def test_declares_image_editing(make_kontext, tiny_kontext: Path) -> None:
    from diffusers import FluxTransformer2DModel

    policy = make_kontext()
    assert (policy.name, policy.modality, policy.takes_image) == ("flux-kontext", "image", True)
    assert policy.config.guidance == 2.5  # the pipeline example's value
    assert isinstance(policy.transformer, FluxTransformer2DModel)
    index = json.loads((tiny_kontext / "model_index.json").read_text())
    assert index["_class_name"] == "FluxKontextPipeline"


def test_prompts_need_a_source_image(make_kontext) -> None:
    policy = make_kontext()
    with pytest.raises(UsageError, match=r"image editing: prompt 'add a hat' has no image.*JSONL"):
        policy.encode([Prompt("add a hat")])
    with pytest.raises(UsageError, match=r"\[3, H, W\]"):
        policy.encode([Prompt("add a hat", torch.zeros(4, 8, 8))])


def test_images_of_one_batch_must_share_a_size(make_kontext) -> None:
    policy = make_kontext(image_size="source")
    prompts = [Prompt(PROMPT, source_image(0)), Prompt(PROMPT, source_image(1, 32, 48))]
    with pytest.raises(UsageError, match="different working sizes.*image_size=output"):
        policy.encode(prompts)
    # Resized to the output size, they batch.
    cond = make_kontext(image_size="output").encode(prompts)
    assert cond["image_latents"].shape == (2, 64, 16)


def test_image_latents_and_ids_match_prepare_latents(make_kontext, kontext_pipe) -> None:
    """(z - shift) * scale of the VAE posterior mean, packed 2x2; ids (1, row, col) after the
    noisy tokens' (0, row, col): FluxKontextPipeline.prepare_latents for the same image."""
    image = source_image(0, 32, 48)  # 32x48 pixels: a 16x24 latent, 8x12 = 96 tokens
    policy = make_kontext(image_size="source")
    cond = policy.encode([Prompt(PROMPT, image)])
    with torch.no_grad():
        _, image_latents, latent_ids, image_ids = kontext_pipe.prepare_latents(
            pipeline_image(kontext_pipe, image), 1, 4, SIZE, SIZE, torch.float32,
            torch.device("cpu"), None,
        )  # fmt: skip
    assert cond["image_latents"].shape == (1, 96, 16)
    torch.testing.assert_close(cond["image_latents"], image_latents, atol=1e-6, rtol=0)
    assert torch.equal(image_ids[:, 0], torch.ones(96))  # the condition's marker
    noise = policy.initial_noise(1, torch.Generator().manual_seed(0))
    hidden, ids = policy._transformer_tokens(noise, cond)
    assert hidden.shape == (1, 64 + 96, 16)
    assert torch.equal(ids, torch.cat([latent_ids, image_ids]))


def test_each_source_image_is_encoded_once(make_kontext, monkeypatch) -> None:
    policy = make_kontext()
    calls = []
    encode = policy._encode_image
    monkeypatch.setattr(policy, "_encode_image", lambda image: calls.append(1) or encode(image))
    image = source_image(0)
    first = policy.encode([Prompt(PROMPT, image), Prompt("add a hat", image.clone())])
    again = policy.encode([Prompt("add a hat", image)])
    assert len(calls) == 1
    assert torch.equal(first["image_latents"][1], again["image_latents"][0])


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (1000, 1000, (1024, 1024)),  # square
        (600, 800, (880, 1184)),  # 4:3 landscape; 1184/880 = 1.345 is the nearest ratio
        (2000, 500, (1568, 672)),  # taller than any preferred size: the tallest
    ],
)
def test_preferred_working_size(make_kontext, height: int, width: int, expected) -> None:
    """The pipeline's rule: the preferred Kontext resolution of the nearest aspect ratio."""
    policy = make_kontext(image_size="preferred")
    assert policy.working_size(torch.zeros(3, height, width)) == expected
    assert make_kontext(image_size="output").working_size(torch.zeros(3, 40, 48)) == (SIZE, SIZE)
    # The image's own size floored to the packing multiple (16 for FLUX; 4 for the tiny VAE).
    assert make_kontext(image_size="source").working_size(torch.zeros(3, 42, 57)) == (40, 56)


def test_sampling_and_decode_reproduce_the_pipeline(make_kontext, kontext_pipe) -> None:
    """An Euler loop over policy.predict reproduces FluxKontextPipeline's latents and images for
    a source image of another shape than the output."""
    image = source_image(0, 32, 48)
    policy = make_kontext(image_size="source")
    kwargs = dict(height=SIZE, width=SIZE, num_inference_steps=3, guidance_scale=2.5)
    kwargs.update(max_sequence_length=16, max_area=SIZE * SIZE, _auto_resize=False)
    results = [
        kontext_pipe(
            image=image[None],
            prompt=PROMPT,
            generator=torch.Generator().manual_seed(3),
            output_type=output,
            **kwargs,
        ).images
        for output in ("latent", "pt")
    ]
    sigmas = kontext_pipe.scheduler.sigmas  # [1, ..., 0], shifted for 64 noisy tokens

    cond = policy.encode([Prompt(PROMPT, image)])
    x = policy.initial_noise(1, torch.Generator().manual_seed(3))
    with torch.no_grad():
        for k in range(len(sigmas) - 1):
            v = policy.predict(x, sigmas[k : k + 1], cond)
            assert v.shape == x.shape  # only the noisy tokens' output
            x = x + (sigmas[k + 1] - sigmas[k]) * v
    torch.testing.assert_close(x, results[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(policy.decode(x), results[1], rtol=1e-4, atol=1e-4)
    # The source image reaches the prediction.
    other = policy.encode([Prompt(PROMPT, source_image(5, 32, 48))])
    noise = policy.initial_noise(1, torch.Generator().manual_seed(3))
    sigma = sigmas[:1]
    assert not torch.allclose(
        policy.predict(noise, sigma, cond), policy.predict(noise, sigma, other)
    )


def test_tiny_builder_command_writes_a_kontext_checkpoint(tmp_path: Path, capsys) -> None:
    """`python -m dance_flux.tiny OUT --kontext`: FluxKontextPipeline's layout, which the
    policy's layout check accepts and FluxKontextPipeline loads."""
    from diffusers import FluxKontextPipeline

    from dance_flux.layout import check_layout
    from dance_flux.tiny import main

    main([str(tmp_path / "k"), "--kontext"])
    assert "FLUX.1 Kontext" in capsys.readouterr().out
    check_layout(tmp_path / "k")
    index = json.loads((tmp_path / "k" / "model_index.json").read_text())
    assert index["_class_name"] == "FluxKontextPipeline"
    scheduler = json.loads((tmp_path / "k" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["use_dynamic_shifting"] is True
    assert FluxKontextPipeline.from_pretrained(tmp_path / "k", local_files_only=True)
