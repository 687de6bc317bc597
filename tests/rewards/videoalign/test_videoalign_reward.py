"""The ``videoalign`` reward on a tiny random VideoAlign checkpoint in the released layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dance.cli.recipe import parse_reward_arg, resolve_reward
from dance.errors import ConfigError, ModelLayoutError, UsageError
from dance.interfaces import Prompt, Runtime
from dance.registry import load_registry
from dance.testing.reward_contract import RewardContract
from dance_videoalign import VideoAlignReward
from dance_videoalign.prompt import REWARD_TOKENS

PUBLISHED_MEAN = torch.tensor([3.6757, 1.1646, 2.8105], dtype=torch.float64)
PUBLISHED_STD = torch.tensor([2.2476, 1.3811, 2.5121], dtype=torch.float64)


def _video(batch: int = 2, frames: int = 6, size: tuple[int, int] = (56, 56), seed: int = 0):
    return torch.rand(batch, 3, frames, *size, generator=torch.Generator().manual_seed(seed))


def _stack(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([out["vq"], out["mq"], out["ta"]], dim=1)


class TestVideoAlignContract(RewardContract):
    @pytest.fixture
    def reward(self, shared_reward: VideoAlignReward) -> VideoAlignReward:
        return shared_reward

    @pytest.fixture
    def media_shape(self):
        return {"video": (3, 5, 56, 56)}


def _reference_raw(reward: VideoAlignReward, media: torch.Tensor, prompt: str, mrope: bool):
    """Raw [3] scores of one video through transformers' own Qwen2-VL forward (which merges the
    video embeddings itself), with VideoAlign's positions 0..L-1 given explicitly, or with the
    3D M-RoPE positions transformers 5 derives from ``mm_token_type_ids``."""
    pixel_values, grid = reward.prepare_videos(media)
    input_ids, attention_mask = reward.prepare_text([Prompt(prompt)], grid)
    model = reward.loaded.model
    kwargs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values_videos": pixel_values,
        "video_grid_thw": grid,
    }
    if mrope:
        kwargs["mm_token_type_ids"] = (input_ids == model.config.video_token_id).int() * 2
    else:
        length = input_ids.shape[1]
        kwargs["position_ids"] = torch.arange(length).view(1, 1, -1).expand(3, 1, -1)
    with torch.no_grad():
        model.model.rope_deltas = None  # no cached deltas from an earlier call
        hidden = model.model(**kwargs).last_hidden_state[0]
        head = model.rm_head(hidden)  # [L, output_dim]
    ids = reward.loaded.tokenizer.convert_tokens_to_ids(list(REWARD_TOKENS))
    where = [int((input_ids[0] == i).nonzero()) for i in ids]
    if head.shape[1] == 3:  # one output per reward token: VideoAlign's diagonal
        return torch.stack([head[where[k], k] for k in range(3)]).float()
    return head[where, 0].float()


def test_scores_follow_the_released_positions(make_reward) -> None:
    reward = make_reward(normalize=False)
    media = _video(1, seed=3)
    ours = _stack(reward.score(media, [Prompt("a dog running in the city")]))[0]
    released = _reference_raw(reward, media, "a dog running in the city", mrope=False)
    torch.testing.assert_close(ours, released, atol=1e-5, rtol=1e-5)
    # Qwen2-VL's 3D video positions (transformers 5's default) give other scores: the choice
    # is visible, so the test above can tell the two apart.
    mrope = _reference_raw(reward, media, "a dog running in the city", mrope=True)
    assert (ours - mrope).abs().max() > 1e-3


def test_three_output_head_reads_the_diagonal(tiny_videoalign_3: Path) -> None:
    from dance.config import build
    from dance_videoalign import VideoAlignConfig

    config = build(VideoAlignConfig, {"model": str(tiny_videoalign_3), "min_pixels": 3136})
    reward = VideoAlignReward(config, Runtime())
    assert reward.loaded.model.rm_head.weight.shape[0] == 3
    media = _video(1, seed=4)
    raw = _stack(reward.score(media, [Prompt("a red car")]))[0].double()
    expected = _reference_raw(reward, media, "a red car", mrope=False).double()
    torch.testing.assert_close(raw, (expected - PUBLISHED_MEAN) / PUBLISHED_STD, atol=1e-5, rtol=0)


def test_normalisation_uses_the_published_constants(make_reward, shared_reward) -> None:
    media, prompts = _video(2, seed=5), [Prompt("a cat"), Prompt("two birds flying")]
    raw = _stack(make_reward(normalize=False).score(media, prompts)).double()
    normed = _stack(shared_reward.score(media, prompts)).double()
    torch.testing.assert_close(normed, (raw - PUBLISHED_MEAN) / PUBLISHED_STD, atol=1e-6, rtol=0)


def test_batch_of_different_prompt_lengths_scores_as_each_alone(shared_reward) -> None:
    media = _video(3, frames=7, size=(56, 84), seed=6)
    prompts = [
        Prompt("a cat"),
        Prompt("a man walking a dog along a river in the morning, the camera moves slowly left"),
        Prompt("sun"),
    ]
    batched = _stack(shared_reward.score(media, prompts))
    for i in range(3):
        alone = _stack(shared_reward.score(media[i : i + 1], prompts[i : i + 1]))
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=0)


def test_micro_batches_score_as_one_batch(make_reward, shared_reward) -> None:
    media, prompts = _video(3, seed=7), [Prompt(f"a {w} sky") for w in ("red", "blue", "dark")]
    whole = _stack(shared_reward.score(media, prompts))
    split = _stack(make_reward(batch_size=2).score(media, prompts))
    torch.testing.assert_close(whole, split, atol=1e-5, rtol=0)


def test_video_length_and_fps_change_what_is_read(shared_reward, make_reward) -> None:
    # 12 frames at 8 fps read 4 frames; at 2 fps (1 frame per second of 6 s) they read 12.
    media, prompts = _video(1, frames=12, seed=8), [Prompt("a horse")]
    assert shared_reward.frame_indices(12).tolist() == [0, 4, 7, 11]
    slow = make_reward(fps=2.0)
    assert slow.frame_indices(12).tolist() == list(range(12))
    assert not torch.allclose(
        _stack(shared_reward.score(media, prompts)), _stack(slow.score(media, prompts))
    )


def test_non_finite_video_gives_nan_for_that_sample_only(shared_reward) -> None:
    media, prompts = _video(2, seed=9), [Prompt("a cat"), Prompt("a dog")]
    clean = _stack(shared_reward.score(media, prompts))
    media[0, 1, 2, 3, 4] = float("nan")
    out = _stack(shared_reward.score(media, prompts))
    assert torch.isnan(out[0]).all()
    torch.testing.assert_close(out[1], clean[1], atol=1e-5, rtol=0)


def test_images_and_single_frames_are_rejected(shared_reward) -> None:
    assert not shared_reward.accepts("image")
    with pytest.raises(ValueError, match="videos"):
        shared_reward.score(torch.rand(1, 3, 56, 56), [Prompt("a cat")])
    with pytest.raises(ValueError, match="at least 2 frames"):
        shared_reward.score(torch.rand(1, 3, 1, 56, 56), [Prompt("a cat")])


def test_prompt_with_a_reward_token_is_an_error(shared_reward) -> None:
    with pytest.raises(ValueError, match="exactly once"):
        shared_reward.score(_video(1), [Prompt("a cat <|MQ_reward|>")])


def test_component_selection_through_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DANCE_PLUGINS", "videoalign")
    registry = load_registry()
    assert registry.plugins["videoalign"].loaded, registry.plugins["videoalign"].error
    assert registry.get("reward", "videoalign") is VideoAlignReward

    class VideoPolicy:  # resolve_reward reads only the policy's name and modality
        name, modality = "some-video-policy", "video"

    class ImagePolicy:
        name, modality = "some-image-policy", "image"

    spec = resolve_reward(parse_reward_arg("videoalign.mq:0.5"), VideoPolicy, registry)
    assert (spec.name, spec.component, spec.weight, spec.label) == (
        "videoalign",
        "mq",
        0.5,
        "videoalign.mq",
    )
    assert resolve_reward(parse_reward_arg("videoalign"), VideoPolicy, registry).component == ""
    assert VideoAlignReward.components[0] == "vq"  # the default component
    with pytest.raises(ConfigError, match="no component 'overall'"):
        resolve_reward(parse_reward_arg("videoalign.overall"), VideoPolicy, registry)
    with pytest.raises(UsageError, match="scores video"):
        resolve_reward(parse_reward_arg("videoalign"), ImagePolicy, registry)


def test_released_key_names_in_tiny_checkpoint(tiny_videoalign: Path) -> None:
    state = torch.load(tiny_videoalign / "checkpoint-8" / "model.pth", weights_only=True)
    for key in (
        "base_model.model.visual.patch_embed.proj.weight",
        "base_model.model.visual.merger.mlp.0.weight",
        "base_model.model.model.embed_tokens.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
        "base_model.model.model.layers.1.mlp.down_proj.lora_B.default.weight",
        "base_model.model.lm_head.weight",
        "base_model.model.rm_head.weight",
    ):
        assert key in state, key
    # No LoRA on the vision tower, the embeddings or the heads (lora_namespan_exclude).
    lora = [k for k in state if "lora_" in k]
    assert not any(w in k for k in lora for w in ("visual", "embed_tokens", "lm_head", "rm_head"))
    assert state["base_model.model.rm_head.weight"].shape[0] == 1  # released output_dim


def test_lora_changes_the_scores(make_reward, shared_reward) -> None:
    media, prompts = _video(1, seed=10), [Prompt("a cat")]
    before = _stack(shared_reward.score(media, prompts))
    reward = make_reward()
    with torch.no_grad():
        for name, param in reward.loaded.model.named_parameters():
            if "lora_B" in name:
                param.zero_()
    assert (before - _stack(reward.score(media, prompts))).abs().max() > 1e-4


def _copy_reward_dir(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_layout_errors(tiny_videoalign: Path, tmp_path: Path, make_reward) -> None:
    with pytest.raises(ModelLayoutError, match="does not exist"):
        make_reward(model=str(tmp_path / "nowhere"))
    with pytest.raises(ModelLayoutError, match="not in the Hugging Face cache"):
        make_reward(model="someone/NotCachedVideoReward")
    with pytest.raises(ModelLayoutError, match="no checkpoint-3/"):
        make_reward(checkpoint_step=3)

    broken = _copy_reward_dir(tiny_videoalign, tmp_path / "broken")
    weights = broken / "checkpoint-8" / "model.pth"
    state = torch.load(weights, weights_only=True)
    del state["base_model.model.rm_head.weight"]
    torch.save(state, weights)
    with pytest.raises(ModelLayoutError, match="1 missing key"):
        make_reward(model=str(broken))

    no_weights = _copy_reward_dir(tiny_videoalign, tmp_path / "no-weights")
    (no_weights / "checkpoint-8" / "model.pth").unlink()
    with pytest.raises(ModelLayoutError, match="has no model.pth"):
        make_reward(model=str(no_weights))

    with pytest.raises(ModelLayoutError, match="base model directory"):
        make_reward(base_model=str(tmp_path))


def test_latest_checkpoint_is_loaded_by_default(tiny_videoalign: Path, tmp_path: Path, make_reward):
    two = _copy_reward_dir(tiny_videoalign, tmp_path / "two")
    state = torch.load(two / "checkpoint-8" / "model.pth", weights_only=True)
    state["base_model.model.rm_head.weight"] = -state["base_model.model.rm_head.weight"]
    (two / "checkpoint-12").mkdir()
    torch.save(state, two / "checkpoint-12" / "model.pth")
    media, prompts = _video(1, seed=11), [Prompt("a cat")]
    latest = _stack(make_reward(model=str(two), normalize=False).score(media, prompts))
    step8 = _stack(
        make_reward(model=str(two), normalize=False, checkpoint_step=8).score(media, prompts)
    )
    torch.testing.assert_close(latest, -step8, atol=1e-6, rtol=0)


def test_bf16_frozen_dtype_scores_close_to_fp32(tiny_videoalign: Path, shared_reward) -> None:
    from dance.config import build
    from dance_videoalign import VideoAlignConfig

    config = build(VideoAlignConfig, {"model": str(tiny_videoalign), "min_pixels": 3136})
    reward = VideoAlignReward(config, Runtime(frozen_dtype=torch.bfloat16))
    assert reward.loaded.model.rm_head.weight.dtype == torch.bfloat16
    media, prompts = _video(2, seed=12), [Prompt("a cat"), Prompt("a dog")]
    out = reward.score(media, prompts)
    assert all(v.dtype == torch.float32 and v.shape == (2,) for v in out.values())
    torch.testing.assert_close(
        _stack(out), _stack(shared_reward.score(media, prompts)), atol=0.1, rtol=0
    )
