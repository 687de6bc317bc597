"""Tiny random CLIP-family models in the released file layouts, for tests and smoke runs.

Each builder writes what the real release looks like on disk, so that the rewards load it through
the same code path as the real weights:

* :func:`register_tiny_open_clip` adds open_clip model configs shaped like ``ViT-H-14`` and
  ``ViT-L-14`` (same config keys, tiny widths; the real 49408-token vocabulary so open_clip's
  bundled tokenizer works);
* :func:`write_hps_checkpoint`: a torch file ``{"state_dict": ...}`` as ``HPS_v2.1_compressed.pt``;
* :func:`write_open_clip_weights`: ``open_clip_model.safetensors`` as open_clip's hub releases;
* :func:`write_aesthetic_head`: the MLP state dict as ``sac+logos+ava1-l14-linearMSE.pth``;
* :func:`write_pickscore`: a ``CLIPModel.save_pretrained`` directory (PickScore_v1) and a
  ``CLIPProcessor.save_pretrained`` directory (the laion processor), with the real CLIP BPE
  tokenizer rebuilt from open_clip's bundled merges (no download).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

TINY_H14 = "dance-tiny-ViT-H-14"
TINY_L14 = "dance-tiny-ViT-L-14"
IMAGE_SIZE = 28  # two 14-pixel patches a side
VOCAB_SIZE = 49408  # CLIP's BPE vocabulary, so the real tokenizers apply
CONTEXT_LENGTH = 77

_TEXT_CFG = {
    "context_length": CONTEXT_LENGTH,
    "vocab_size": VOCAB_SIZE,
    "width": 32,
    "heads": 2,
    "layers": 2,
}
# Same keys as open_clip's ViT-H-14.json and ViT-L-14.json (the L/14 one QuickGELU, as OpenAI's).
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    TINY_H14: {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": IMAGE_SIZE,
            "layers": 2,
            "width": 32,
            "head_width": 16,
            "patch_size": 14,
        },
        "text_cfg": _TEXT_CFG,
    },
    TINY_L14: {
        "embed_dim": 24,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": IMAGE_SIZE,
            "layers": 2,
            "width": 32,
            "head_width": 16,
            "patch_size": 14,
        },
        "text_cfg": _TEXT_CFG,
    },
}


def register_tiny_open_clip(directory: Path) -> None:
    """Write the tiny configs as open_clip model config JSON files and register them."""
    import open_clip

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, cfg in TINY_CONFIGS.items():
        (directory / f"{name}.json").write_text(json.dumps(cfg, indent=2))
    open_clip.add_model_config(directory)


def _tiny_open_clip(model_name: str, seed: int) -> torch.nn.Module:
    import open_clip

    if open_clip.get_model_config(model_name) is None:
        raise ValueError(f"'{model_name}' is not registered; call register_tiny_open_clip first")
    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, pretrained=None, pretrained_text=False)
    # Random init leaves the towers nearly aligned for every input; spread the projections so
    # that scores differ visibly between images and prompts.
    with torch.no_grad():
        model.visual.proj.normal_(0, 1.0)
        model.text_projection.normal_(0, 1.0)
    return model


def write_hps_checkpoint(path: Path, seed: int = 0, model_name: str = TINY_H14) -> Path:
    """A tiny HPS-v2.1-layout checkpoint: ``torch.save({"state_dict": model.state_dict()})``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": _tiny_open_clip(model_name, seed).state_dict()}, path)
    return path


def write_open_clip_weights(path: Path, model_name: str, seed: int = 0) -> Path:
    """Tiny open_clip weights as open_clip publishes them on the hub (safetensors)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in _tiny_open_clip(model_name, seed).state_dict().items()}
    save_file(state, str(path))
    return path


def write_aesthetic_head(path: Path, input_size: int, seed: int = 0) -> Path:
    """A random aesthetic MLP head saved as the released ``.pth`` (a plain state dict)."""
    from dance_clip_rewards.aesthetic import AestheticHead

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(AestheticHead(input_size).state_dict(), path)
    return path


def clip_tokenizer(max_length: int = CONTEXT_LENGTH) -> Any:
    """CLIP's BPE tokenizer as a transformers ``CLIPTokenizer``, rebuilt from the merges that
    open_clip bundles: the vocabulary is the byte alphabet, the same with ``</w>``, the merges and
    the two special tokens, in that order (ids identical to open_clip's SimpleTokenizer)."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    with gzip.open(default_bpe()) as bpe:
        lines = bpe.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def write_pickscore(model_dir: Path, processor_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """A tiny PickScore: ``CLIPModel`` and ``CLIPProcessor`` saved with ``save_pretrained``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    config = CLIPConfig(
        text_config={
            "vocab_size": VOCAB_SIZE,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": CONTEXT_LENGTH,
            "hidden_act": "gelu",
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 14,
            "hidden_act": "gelu",
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    with torch.no_grad():  # spread the projections, as for the open_clip models
        model.visual_projection.weight.normal_(0, 1.0)
        model.text_projection.weight.normal_(0, 1.0)
    model.save_pretrained(model_dir)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=3,
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer()).save_pretrained(
        processor_dir
    )
    return Path(model_dir), Path(processor_dir)
