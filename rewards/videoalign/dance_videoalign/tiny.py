"""A tiny random VideoAlign checkpoint in the released layout, for tests and smoke runs.

Two folders, as a user has them after downloading ``Qwen/Qwen2-VL-2B-Instruct`` and
``KwaiVGI/VideoReward``:

    base/                      Qwen2-VL-Instruct layout (transformers 4.45 era files)
        config.json            flat Qwen2VLConfig with rope_scaling {type: mrope}
        model.safetensors      Qwen2VLForConditionalGeneration weights
        tokenizer.json, tokenizer_config.json, ...   byte-level BPE with Qwen2-VL's special tokens
        preprocessor_config.json, chat_template.json
    reward/                    VideoReward layout
        model_config.json      data_config, model_config, peft_lora_config, inference_config
        checkpoint-<step>/model.pth   the whole PEFT-wrapped reward model's state dict (LoRA on
                               the language model, trained vision tower, reward head, embeddings
                               grown by the three reward tokens), keys as transformers 4.45 named
                               them (``base_model.model.visual.*``, ``base_model.model.model.*``)

Every part is the real class in miniature (Qwen2VLForConditionalGeneration with a 1-block vision
tower and a 2-layer language model, a peft LoRA, a bias-free linear reward head). The tokenizer is
Qwen2's byte-level BPE (same pre-tokeniser and normaliser) whose merges spell out the words of the
rating instructions and a word list, so prompts tokenise into few pieces; nothing is downloaded.

    python -m dance_videoalign.tiny OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from dance_videoalign.prompt import REWARD_TOKENS, template

# Qwen2-VL's special tokens, in the order of their ids after the BPE vocabulary (151643...).
QWEN2_VL_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2-VL-Instruct's chat template (chat_template.json of the base checkpoint).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2-VL-Instruct's preprocessor_config.json.
PREPROCESSOR_CONFIG = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
}

# Published normalisation of the released checkpoint (model_config.json, inference_config).
INFERENCE_CONFIG = {
    "VQ_mean": 3.6757,
    "VQ_std": 2.2476,
    "MQ_mean": 1.1646,
    "MQ_std": 1.3811,
    "TA_mean": 2.8105,
    "TA_std": 2.5121,
}

_WORDS = """
a an the of in on at with and or by to from under over near a photo video of cat dog bird horse
person man woman child car city street forest river ocean mountain sky sun night day walking
running flying dancing camera moves slowly quickly red green blue yellow white black object number
one two three left right top bottom circle square triangle
"""

TEXT_HIDDEN = 32
VISION_EMBED = 16


def _pieces(text: str) -> list[str]:
    """Qwen2's pre-tokenisation (its regex split, then byte-level characters) of ``text``."""
    from tokenizers import Regex, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return [piece for piece, _ in pre.pre_tokenize_str(text)]


def _prefix_merges(counts: Counter[str]) -> list[tuple[str, str]]:
    """Merges that grow every piece from its first character, so that corpus pieces become one
    token each; deterministic (sorted), and instant to compute.

    Pieces that start a word (``Ġ``, the byte-level space) rank first: within such a piece only
    its own chain can apply (one ``Ġ`` symbol, at the start), so BPE rebuilds the whole piece."""
    prefixes: dict[str, tuple[str, str]] = {}
    for piece in sorted(counts):
        for end in range(2, len(piece) + 1):
            prefixes.setdefault(piece[:end], (piece[: end - 1], piece[end - 1]))
    return [prefixes[p] for p in sorted(prefixes, key=lambda p: (not p.startswith("Ġ"), len(p), p))]


def qwen2_vl_tokenizer():
    """A small Qwen2 byte-level BPE tokenizer with Qwen2-VL's special tokens after the vocabulary
    (pad and unk ``<|endoftext|>``, eos ``<|im_end|>``), padding on the right."""
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import Qwen2Tokenizer

    corpus = template() + "\n" + _WORDS
    counts = Counter(_pieces(corpus))
    merges = _prefix_merges(counts)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = list(dict.fromkeys(alphabet + [a + b for a, b in merges]))
    vocab = {t: i for i, t in enumerate(tokens)}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        errors="replace",
        model_max_length=32768,
        padding_side="right",
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True) for t in QWEN2_VL_SPECIALS]}
    )
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    return tokenizer


def _legacy_config(tokenizer, layers: int, heads: int) -> dict:
    """config.json as Qwen2-VL-2B-Instruct has it (flat text fields, rope_scaling mrope), tiny."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2_VL_SPECIALS}
    head_dim = TEXT_HIDDEN // heads
    half = head_dim // 2
    section = [half - 2 * (half // 4), half // 4, half // 4]  # 2B: [16, 24, 24] of 64
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "hidden_act": "silu",
        "hidden_size": TEXT_HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": 48,
        "max_position_embeddings": 32768,
        "max_window_layers": layers,
        "model_type": "qwen2_vl",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": heads // 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            "depth": 1,
            "embed_dim": VISION_EMBED,
            "mlp_ratio": 2,
            "num_heads": 2,
            "in_chans": 3,
            "hidden_size": TEXT_HIDDEN,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": section},
        "vocab_size": len(tokenizer) + 7,  # the real embedding has spare rows too
    }


def build_base(path: str | Path, seed: int = 0, layers: int = 2, heads: int = 4) -> Path:
    """Write a tiny Qwen2-VL-Instruct checkpoint (the base VideoAlign fine-tunes) to ``path``."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = qwen2_vl_tokenizer()
    tokenizer.save_pretrained(path)
    config = _legacy_config(tokenizer, layers, heads)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(**config))
    model.save_pretrained(path, safe_serialization=True)
    # The 4.45-era files the real checkpoint ships, written last so that they are what is read.
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2))
    (path / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    return path


def model_config(base: str, max_frame_pixels: int = 448 * 448, output_dim: int = 1) -> dict:
    """model_config.json as VideoAlign's train_reward.py writes it (the fields inference reads)."""
    return {
        "data_config": {
            "meta_data": "/path/to/dataset/meta_data.csv",
            "data_dir": "/path/to/dataset",
            "meta_data_test": None,
            "max_frame_pixels": max_frame_pixels,
            "num_frames": None,
            "fps": 2.0,
            "p_shuffle_frames": 0.0,
            "p_color_jitter": 0.0,
            "eval_dim": ["VQ", "MQ", "TA"],
            "prompt_template_type": "detailed_special",
            "add_noise": False,
            "sample_type": "uniform",
            "use_tied_data": True,
        },
        "training_args": {"bf16": True, "output_dir": "rm_output"},
        "model_config": {
            "model_name_or_path": base,
            "model_revision": "main",
            "output_dim": output_dim,
            "use_special_tokens": True,
            "freeze_vision_tower": False,
            "freeze_llm": False,
            "tune_merger": True,
            "torch_dtype": "bfloat16",
            "reward_token": "special",
            "loss_type": "btt",
        },
        "peft_lora_config": {
            "lora_enable": True,
            "vision_lora": False,
            "lora_r": 4,
            "lora_alpha": 8,
            "lora_dropout": 0.05,
            "lora_target_modules": None,
            "lora_namespan_exclude": ["lm_head", "rm_head", "embed_tokens", "visual"],
            "lora_modules_to_save": None,
            "lora_task_type": "CAUSAL_LM",
            "use_rslora": False,
            "num_lora_modules": -1,
        },
        "inference_config": dict(INFERENCE_CONFIG),
    }


def build_tiny_videoalign(
    path: str | Path,
    seed: int = 0,
    step: int = 8,
    max_frame_pixels: int = 448 * 448,
    output_dim: int = 1,
) -> Path:
    """Write ``path/base`` (tiny Qwen2-VL) and ``path/reward`` (tiny VideoReward); returns
    ``path/reward``, whose model_config.json names ``path/base`` as its base model.

    The reward model is built exactly as :func:`dance_videoalign.checkpoint.load_reward_model`
    builds it, then every weight (LoRA included) is drawn at random, so that the LoRA, the reward
    tokens' embeddings and the reward head all change the scores."""
    from dance_videoalign.checkpoint import build_peft_model, to_legacy_keys

    path = Path(path)
    base = build_base(path / "base", seed=seed)
    reward = path / "reward"
    (reward / f"checkpoint-{step}").mkdir(parents=True, exist_ok=True)
    config = model_config(str(base), max_frame_pixels, output_dim)
    (reward / "model_config.json").write_text(json.dumps(config, indent=4))
    model, _ = build_peft_model(base, config, dtype=torch.float32)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed + 1)
        for name, param in model.named_parameters():
            if "lora_" in name or "rm_head" in name:
                param.normal_(0.0, 0.2)
            elif "embed_tokens" in name:
                param[-len(REWARD_TOKENS) :].normal_(0.0, 0.5)
    state = to_legacy_keys(model.state_dict())
    torch.save(state, reward / f"checkpoint-{step}" / "model.pth")
    return reward


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random VideoAlign checkpoint.")
    parser.add_argument("out_dir", help="directory to write (base/ and reward/ inside)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    reward = build_tiny_videoalign(args.out_dir, seed=args.seed)
    print(f"wrote a tiny VideoAlign checkpoint to {reward} in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
