"""The wan-i2v policy against diffusers' WanImageToVideoPipeline on tiny random checkpoints: the
first-frame condition (mask + condition latents, CLIP image features) of Wan2.1 I2V, the
first-frame replacement of Wan2.2 TI2V-5B, sampling end to end, LoRA loading back."""

from __future__ import annotations

import functools

import pytest
import torch
from wan_helpers import (
    FRAMES,
    SIZE,
    TEXTS,
    TI2V_SIZE,
    assert_pipeline_video,
    guided_by_hand,
    load_pipeline,
    ode_video,
    random_image,
)

from dance.errors import UsageError
from dance.interfaces import Prompt
from dance_wan.images import fit_image, to_pil


@pytest.fixture
def i2v_pipe(tiny_wan_i2v):  # noqa: ANN001, ANN201
    from diffusers import WanImageToVideoPipeline

    return load_pipeline(WanImageToVideoPipeline, tiny_wan_i2v)


def eight_bit(image: torch.Tensor) -> torch.Tensor:
    """The image as an 8-bit picture holds it: what a PNG prompt image is."""
    return (image * 255).round() / 255


def test_encode_needs_an_image(make_i2v) -> None:
    policy = make_i2v()
    with pytest.raises(UsageError, match="has no image"):
        policy.encode([Prompt("a cat")])
    with pytest.raises(UsageError, match=r"\[3, H, W\]"):
        policy.encode([Prompt("a cat", torch.zeros(4, 8, 8))])


def test_condition_matches_prepare_latents_and_encode_image(make_i2v, i2v_pipe) -> None:
    """Condition latents (image then zero frames through the VAE, posterior mean, normalised)
    and CLIP features (penultimate hidden state): the pipeline's prepare_latents and
    encode_image for the same image."""
    image = eight_bit(random_image(0, 40, 48))
    policy = make_i2v(image_resize="stretch")
    cond = policy.encode([Prompt("a cat", image)])
    pixels = i2v_pipe.video_processor.preprocess(image[None], height=SIZE, width=SIZE)
    torch.testing.assert_close(fit_image(image, SIZE, SIZE, "stretch"), pixels, atol=1e-6, rtol=0)
    noise = policy.initial_noise(1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, condition = i2v_pipe.prepare_latents(
            pixels, 1, 4, SIZE, SIZE, FRAMES, torch.float32, torch.device("cpu"), None, noise
        )
        features = i2v_pipe.encode_image(to_pil(image), torch.device("cpu"))
    # condition = [mask (4 channels: the first latent frame), condition latents]
    assert condition.shape == (1, 8, 2, 4, 4)
    torch.testing.assert_close(cond["condition_latents"], condition[:, 4:], atol=1e-5, rtol=0)
    mask = condition[:, :4]
    assert mask[:, :, 0].eq(1).all() and not mask[:, :, 1:].any()
    torch.testing.assert_close(cond["image_embeds"], features, atol=1e-6, rtol=0)


def test_predict_is_the_pipelines_guided_velocity(make_i2v, i2v_pipe) -> None:
    policy = make_i2v(cfg_scale=4.0)
    policy.train(False)
    cond = policy.encode([Prompt(t, random_image(i)) for i, t in enumerate(TEXTS)])
    latents = policy.initial_noise(2, torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 4, *latents.shape[2:])
    mask[:, :, 0] = 1
    hidden = torch.cat([latents, mask, cond["condition_latents"]], dim=1)
    with torch.no_grad():
        got = policy.predict(latents, torch.tensor([0.7, 0.7]), cond)
        negative = policy.negative_embeds().expand(2, -1, -1)
        expected = guided_by_hand(
            i2v_pipe.transformer, hidden, 0.7, cond["prompt_embeds"], negative, 4.0,
            image=cond["image_embeds"],
        )  # fmt: skip
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["i2v", "ti2v", "i2v-a14b"])
def test_ode_sampling_reproduces_the_pipeline(
    kind, make_i2v, make_ti2v, make_i2v_a14b, tiny_wan_i2v, tiny_wan_ti2v, tiny_wan_i2v_a14b
) -> None:
    """policy + ode sampler + decode against WanImageToVideoPipeline.__call__ (Euler, same shift,
    steps, latents, negative prompt and scale) for a PNG-like image of the video's size: Wan2.1
    I2V (channel condition + CLIP), TI2V-5B (first frame replaced, per-token timesteps) and
    Wan2.2 I2V-A14B (channel condition, no CLIP, two experts)."""
    from diffusers import WanImageToVideoPipeline

    size = TI2V_SIZE if kind == "ti2v" else SIZE
    make, path = {
        "i2v": (make_i2v, tiny_wan_i2v),
        "i2v-a14b": (make_i2v_a14b, tiny_wan_i2v_a14b),
        "ti2v": (functools.partial(make_ti2v, i2v=True), tiny_wan_ti2v),
    }[kind]
    policy = make(cfg_scale=3.0)
    if kind == "i2v-a14b":
        assert policy.image_encoder is None and len(policy.trainable_modules()) == 2
    image = eight_bit(random_image(4, size, size))
    x = policy.initial_noise(1, torch.Generator().manual_seed(5))
    video = ode_video(policy, Prompt(TEXTS[0], image), x)
    pipe = load_pipeline(WanImageToVideoPipeline, path)
    assert_pipeline_video(pipe, video, x, size, prompt=TEXTS[0], image=to_pil(image))


def test_ti2v_first_frame_is_the_image_and_its_velocity_has_no_weights(make_ti2v, perturb) -> None:
    """The clean prediction of the first latent frame is the image's latents whatever the
    weights: its transitions carry no gradient."""
    policy = make_ti2v(i2v=True)
    perturb(policy)
    cond = policy.encode([Prompt(TEXTS[0], random_image(0, 40, 48))])
    x = policy.initial_noise(1, torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.6])
    v = policy.predict(x, sigma, cond)
    x0 = x - sigma.view(-1, 1, 1, 1, 1) * v
    torch.testing.assert_close(x0[:, :, :1], cond["condition_latents"], atol=1e-5, rtol=0)
    params = policy.trainable_parameters()
    first = torch.autograd.grad(v[:, :, :1].sum(), params, retain_graph=True, allow_unused=True)
    assert all(g is None or not g.any() for g in first)
    rest = torch.autograd.grad(v[:, :, 1:].square().mean(), params, allow_unused=True)
    assert any(g is not None and g.any() for g in rest)


def test_lora_weights_load_into_the_pipeline(make_i2v, i2v_pipe, perturb, tmp_path) -> None:
    policy = make_i2v(cfg_scale=1.0)
    perturb(policy)
    policy.save_trained(str(tmp_path))
    policy.train(False)
    cond = policy.encode([Prompt(TEXTS[0], random_image(2))])
    latents = policy.initial_noise(1, torch.Generator().manual_seed(2))
    mask = torch.zeros(1, 4, *latents.shape[2:])
    mask[:, :, 0] = 1
    hidden = torch.cat([latents, mask, cond["condition_latents"]], dim=1)

    def pipeline_velocity() -> torch.Tensor:
        with torch.no_grad():
            return i2v_pipe.transformer(
                hidden_states=hidden,
                timestep=torch.tensor([600.0]),
                encoder_hidden_states=cond["prompt_embeds"],
                encoder_hidden_states_image=cond["image_embeds"],
                return_dict=False,
            )[0]

    with torch.no_grad():
        trained = policy.predict(latents, torch.tensor([0.6]), cond)
    base = pipeline_velocity()
    i2v_pipe.load_lora_weights(str(tmp_path))
    assert not torch.allclose(trained, base, atol=1e-3)
    torch.testing.assert_close(pipeline_velocity(), trained, atol=1e-5, rtol=1e-5)


def test_images_are_encoded_once(make_i2v) -> None:
    policy = make_i2v()
    calls = []
    original = policy._encode_image

    def counting(image):  # noqa: ANN001, ANN202
        calls.append(image)
        return original(image)

    policy._encode_image = counting
    image = random_image(3)
    policy.encode([Prompt("a cat", image), Prompt("a dog", image.clone())])
    assert len(calls) == 1
