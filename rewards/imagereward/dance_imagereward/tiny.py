"""A tiny random ImageReward checkpoint in the released layout, for tests and smoke runs.

Writes what a user downloads, only tiny: ``ImageReward.pt`` (a plain state dict with the released
key names, :func:`released_shapes`), ``med_config.json`` (BLIP's BERT config format) and a
``tokenizer/`` directory (a WordPiece tokenizer in bert-base-uncased's format, built here from a
word list, no download). Load it through the same path as the real files::

    python -m dance_imagereward.tiny OUT_DIR
    dance run ... --reward imagereward rewards.imagereward.model=OUT_DIR \
        rewards.imagereward.tokenizer=OUT_DIR/tokenizer
"""

from __future__ import annotations

import argparse
import json
import string
from dataclasses import dataclass
from pathlib import Path

import torch

from dance_imagereward.layout import CHECKPOINT_FILE, MED_CONFIG_FILE
from dance_imagereward.model import HEAD_SIZES

_WORD_TEXT = """
a an the of in on at with and photo picture painting portrait image of cat dog bird horse fish
man woman child red green blue yellow black white small large old young happy tree flower river
sky sun moon night city street house castle car boat style oil digital cinematic detailed
realistic high quality circle square triangle two three left right top bottom apple
"""
_WORDS = _WORD_TEXT.split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass(frozen=True)
class Sizes:
    """Architecture sizes; the defaults are tiny, :data:`RELEASED` are ImageReward v1.0's."""

    vision_width: int = 128  # two 64-dim heads
    vision_layers: int = 2
    image_size: int = 224
    patch_size: int = 16
    text_width: int = 32
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 37
    max_positions: int = 40
    vocab_size: int = 0  # 0: the tiny tokenizer's size
    proj_dim: int = 16  # BLIP's contrastive embed_dim (256 in the release), unused by the score


RELEASED = Sizes(
    vision_width=1024,
    vision_layers=24,
    image_size=224,
    patch_size=16,
    text_width=768,
    text_layers=12,
    text_heads=12,
    text_intermediate=3072,
    max_positions=512,
    vocab_size=30524,
    proj_dim=256,
)


def vocabulary() -> list[str]:
    """Tokens of the tiny WordPiece vocabulary, in id order ([PAD] is 0, as in BERT)."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    pieces = ["##" + c for c in string.ascii_lowercase + string.digits]
    return list(dict.fromkeys(SPECIALS + sorted(set(_WORDS)) + chars + pieces))


def write_tokenizer(directory: str | Path) -> Path:
    """A BERT WordPiece tokenizer (lower-casing, accent stripping, [CLS] ... [SEP]) in
    bert-base-uncased's files: vocab.txt, tokenizer.json, tokenizer_config.json."""
    from transformers import BertTokenizer

    directory = Path(directory)
    tokens = vocabulary()
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(directory)
    (directory / "vocab.txt").write_text("".join(t + "\n" for t in tokens))
    return directory


def med_config(sizes: Sizes, vocab_size: int) -> dict:
    """BLIP's med_config.json for ``sizes`` (same keys as the released one; like it, it states an
    ``encoder_width`` that BLIP replaces by the ViT width)."""
    return {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": sizes.text_width,
        "initializer_range": 0.02,
        "intermediate_size": sizes.text_intermediate,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": sizes.max_positions,
        "model_type": "bert",
        "num_attention_heads": sizes.text_heads,
        "num_hidden_layers": sizes.text_layers,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": vocab_size,
        "encoder_width": sizes.text_width,
        "add_cross_attention": True,
    }


def released_shapes(sizes: Sizes, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """Every key of ImageReward's ``state_dict()`` with its shape, written from the modules of
    THUDM/ImageReward (BLIP's vit.py and med.py, ImageReward's MLP), not from the mapping."""
    v, t = sizes.vision_width, sizes.text_width
    grid = sizes.image_size // sizes.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "blip.visual_encoder.cls_token": (1, 1, v),
        "blip.visual_encoder.pos_embed": (1, grid * grid + 1, v),
        "blip.visual_encoder.patch_embed.proj.weight": (v, 3, sizes.patch_size, sizes.patch_size),
        "blip.visual_encoder.patch_embed.proj.bias": (v,),
    }
    for i in range(sizes.vision_layers):
        block = f"blip.visual_encoder.blocks.{i}."
        for name, (out, inp) in {
            "attn.qkv": (3 * v, v),
            "attn.proj": (v, v),
            "mlp.fc1": (4 * v, v),
            "mlp.fc2": (v, 4 * v),
        }.items():
            shapes[block + name + ".weight"] = (out, inp)
            shapes[block + name + ".bias"] = (out,)
        for norm in ("norm1", "norm2"):
            shapes[block + norm + ".weight"] = (v,)
            shapes[block + norm + ".bias"] = (v,)
    shapes["blip.visual_encoder.norm.weight"] = (v,)
    shapes["blip.visual_encoder.norm.bias"] = (v,)

    text = "blip.text_encoder."
    shapes[text + "embeddings.position_ids"] = (1, sizes.max_positions)
    shapes[text + "embeddings.word_embeddings.weight"] = (vocab_size, t)
    shapes[text + "embeddings.position_embeddings.weight"] = (sizes.max_positions, t)
    shapes[text + "embeddings.LayerNorm.weight"] = (t,)
    shapes[text + "embeddings.LayerNorm.bias"] = (t,)
    for i in range(sizes.text_layers):
        layer = f"{text}encoder.layer.{i}."
        linears = {
            "attention.self.query": (t, t),
            "attention.self.key": (t, t),
            "attention.self.value": (t, t),
            "attention.output.dense": (t, t),
            "crossattention.self.query": (t, t),
            "crossattention.self.key": (t, v),  # keys and values read the ViT width
            "crossattention.self.value": (t, v),
            "crossattention.output.dense": (t, t),
            "intermediate.dense": (sizes.text_intermediate, t),
            "output.dense": (t, sizes.text_intermediate),
        }
        for name, (out, inp) in linears.items():
            shapes[layer + name + ".weight"] = (out, inp)
            shapes[layer + name + ".bias"] = (out,)
        for norm in ("attention.output.LayerNorm", "crossattention.output.LayerNorm"):
            shapes[layer + norm + ".weight"] = (t,)
            shapes[layer + norm + ".bias"] = (t,)
        shapes[layer + "output.LayerNorm.weight"] = (t,)
        shapes[layer + "output.LayerNorm.bias"] = (t,)
    shapes["blip.vision_proj.weight"] = (sizes.proj_dim, v)
    shapes["blip.vision_proj.bias"] = (sizes.proj_dim,)
    shapes["blip.text_proj.weight"] = (sizes.proj_dim, t)
    shapes["blip.text_proj.bias"] = (sizes.proj_dim,)

    widths = (t, *HEAD_SIZES)
    for k, index in enumerate((0, 2, 4, 6, 7)):
        shapes[f"mlp.layers.{index}.weight"] = (widths[k + 1], widths[k])
        shapes[f"mlp.layers.{index}.bias"] = (widths[k + 1],)
    return shapes


def random_state_dict(
    shapes: dict[str, tuple[int, ...]], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Random fp32 values: small weights, LayerNorm scales near 1, non-zero biases (so that a
    dropped or misplaced bias changes the score)."""
    state = {}
    for key, shape in shapes.items():
        if key.endswith("position_ids"):
            state[key] = torch.arange(shape[-1]).unsqueeze(0)
            continue
        noise = torch.randn(shape, generator=generator)
        if "norm" in key.lower() and key.endswith(".weight"):
            state[key] = 1.0 + 0.1 * noise
        elif key.startswith("mlp.layers."):
            state[key] = noise / shape[-1] ** 0.5  # keeps the head's output of order one
        else:
            state[key] = 0.05 * noise
    return state


def build_tiny_imagereward(path: str | Path, seed: int = 0, sizes: Sizes | None = None) -> Path:
    """Write ``ImageReward.pt``, ``med_config.json`` and ``tokenizer/`` to ``path``; the result
    depends only on ``seed`` and ``sizes``."""
    sizes = sizes or Sizes()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_tokenizer(path / "tokenizer")
    # BLIP adds [DEC] and [ENC] to BERT's vocabulary; the embeddings have a row for each.
    vocab_size = sizes.vocab_size or len(vocabulary()) + 2
    (path / MED_CONFIG_FILE).write_text(json.dumps(med_config(sizes, vocab_size), indent=2))
    generator = torch.Generator().manual_seed(seed)
    state = random_state_dict(released_shapes(sizes, vocab_size), generator)
    torch.save(state, path / CHECKPOINT_FILE)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random ImageReward checkpoint.")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(
        f"wrote a tiny ImageReward checkpoint to {build_tiny_imagereward(args.out_dir, args.seed)}"
    )


if __name__ == "__main__":
    main()
