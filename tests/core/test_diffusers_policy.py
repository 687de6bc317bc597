"""The shared diffusers policy base: its prompt cache, guidance forms, latent packing and config."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dance.config import build, describe
from dance.diffusers_policy import (
    DiffusersPolicyConfig,
    EmbeddingCache,
    cfg_combine,
    embedded_guidance,
    guided_forward,
    latent_image_ids,
    override,
    pack_latents,
    unpack_latents,
)
from dance.errors import ConfigError


class Encoder:
    """Encodes texts as [N, 2] rows (length, first character code) and records its calls."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(list(texts))
        rows = torch.tensor([[len(t), ord(t[0])] for t in texts], dtype=torch.float32)
        return rows, rows.sum(dim=1)


def test_cache_encodes_each_distinct_missing_item_once_in_one_call():
    cache, encoder = EmbeddingCache(size=8), Encoder()
    embeds, pooled = cache.lookup(["ab", "c", "ab"], encoder)
    assert encoder.calls == [["ab", "c"]]
    assert embeds.tolist() == [[2, 97], [1, 99], [2, 97]] and pooled.tolist() == [99, 100, 99]
    again, _ = cache.lookup(["c", "d", "ab"], encoder)
    assert encoder.calls == [["ab", "c"], ["d"]]
    assert again.tolist() == [[1, 99], [1, 100], [2, 97]]


def test_cache_drops_the_least_recently_used_and_keeps_own_copies():
    cache, encoder = EmbeddingCache(size=2), Encoder()
    cache.lookup(["a"], encoder)
    cache.lookup(["b"], encoder)
    cache.lookup(["a"], encoder)  # "b" is now the least recently used
    cache.lookup(["c"], encoder)
    assert list(cache) == ["a", "c"]
    stored = cache["a"][0]
    # An own copy, not a view that keeps the encoder's whole batch alive.
    assert stored.untyped_storage().nbytes() == stored.numel() * stored.element_size()


def test_disabled_cache_keeps_nothing_but_still_deduplicates():
    cache, encoder = EmbeddingCache(size=8, enabled=False), Encoder()
    cache.lookup(["a", "a"], encoder)
    cache.lookup(["a"], encoder)
    assert encoder.calls == [["a"], ["a"]] and not cache


def test_cache_keys_items_by_a_key_function():
    cache = EmbeddingCache(size=8)
    seen = []

    def encode(images: list[torch.Tensor]) -> list[torch.Tensor]:
        seen.append(len(images))
        return [torch.stack([image.sum() for image in images])]

    image = torch.ones(2, 2)
    (out,) = cache.lookup([image, image.clone()], encode, key=lambda t: tuple(t.flatten().tolist()))
    assert seen == [1] and out.tolist() == [4.0, 4.0]


def test_true_cfg_batches_both_branches_in_the_pipeline_order():
    """uncond + s (cond - uncond), Ho & Salimans (2022); each branch in its half of one batch."""
    calls = []

    def forward(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        calls.append(e[:, 0].tolist())
        return x * e

    x, cond, uncond = torch.tensor([[2.0], [3.0]]), torch.tensor([[5.0], [7.0]]), torch.ones(2, 1)
    expected = x * 1.0 + 4.5 * (x * cond - x * 1.0)
    first = guided_forward(forward, (x, cond), (x, uncond), 4.5)
    second = guided_forward(forward, (x, cond), (x, uncond), 4.5, uncond_first=False)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)
    assert calls == [[1.0, 1.0, 5.0, 7.0], [5.0, 7.0, 1.0, 1.0]]
    assert cfg_combine(torch.tensor(1.0), torch.tensor(3.0), 2.0).item() == 5.0


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_cfg_scale_of_one_or_less_is_one_conditional_pass(scale):
    calls = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x + 1

    out = guided_forward(forward, (torch.zeros(3),), (torch.ones(3),), scale)
    assert calls == [3] and out.tolist() == [1.0, 1.0, 1.0]


def test_embedded_guidance_rounds_in_the_given_dtype():
    """HunyuanVideo's pipeline makes 6.0 in bf16, then x 1000: 6016 (bf16 keeps 8 bits)."""
    g = embedded_guidance(6.0, 2, torch.device("cpu"), torch.bfloat16, 1000.0)
    assert g.dtype == torch.bfloat16 and g.tolist() == [6016.0, 6016.0]
    assert embedded_guidance(3.5, 1, torch.device("cpu")).tolist() == [3.5]


def test_packing_round_trips_and_ids_follow_the_grid():
    latents = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    packed = pack_latents(latents)
    assert packed.shape == (2, 12, 16)
    # Token (row 1, col 2) holds the 2x2 patch at latent rows 2-3, columns 4-5, channels first.
    torch.testing.assert_close(packed[0, 1 * 4 + 2].view(4, 2, 2), latents[0, :, 2:4, 4:6])
    torch.testing.assert_close(unpack_latents(packed, 6, 8), latents, atol=0, rtol=0)
    ids = latent_image_ids(3, 4, torch.device("cpu"))
    assert ids.shape == (12, 3) and ids[1 * 4 + 2].tolist() == [0.0, 1.0, 2.0]


@dataclasses.dataclass
class SixteenConfig(DiffusersPolicyConfig):
    size_multiple = 16
    size_reason = "VAE factor 8 x patch 2"

    lora_rank: int = override("lora_rank", 4, " (a note)")


def test_override_keeps_the_description_and_range():
    fields = {f.name: f for f in describe(SixteenConfig)}
    base = {f.name: f for f in describe(DiffusersPolicyConfig)}
    assert fields["lora_rank"].default == 4 and base["lora_rank"].default == 128
    assert fields["lora_rank"].help == base["lora_rank"].help + " (a note)"
    with pytest.raises(ConfigError, match="lora_rank must be at least 1"):
        build(SixteenConfig, {"lora_rank": 0}, prefix="policy.")


def test_config_checks_size_and_lora_targets():
    with pytest.raises(ConfigError, match=r"policy.width must be a multiple of 16 \(VAE factor 8"):
        build(SixteenConfig, {"width": 40}, prefix="policy.")
    build(SixteenConfig, {"width": 48}, prefix="policy.")
    with pytest.raises(ConfigError, match="lora_targets is empty"):
        build(DiffusersPolicyConfig, {"lora_targets": []}, prefix="policy.")
    build(DiffusersPolicyConfig, {"lora_targets": [], "finetune": "full"}, prefix="policy.")
