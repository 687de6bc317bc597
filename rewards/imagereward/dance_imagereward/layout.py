"""The released ImageReward checkpoint: where it is, what its keys are, and how they map onto
transformers' BLIP modules.

THUDM/ImageReward on the Hugging Face Hub ships ``ImageReward.pt``, a plain ``state_dict`` of the
``ImageReward`` module in ``ImageReward/ImageReward.py``, and ``med_config.json``, the BERT config
of BLIP's text encoder ("med"). The state dict has three parts:

* ``blip.visual_encoder.*``: BLIP's timm-style ViT (``ImageReward/models/BLIP/vit.py``):
  ``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.{norm1, attn.qkv, attn.proj,
  norm2, mlp.fc1, mlp.fc2}`` and the final ``norm``. ImageReward builds it with
  ``create_vit("large", 224)``: width 1024, 24 blocks, 16 heads, 16 px patches, LayerNorm eps 1e-6.
* ``blip.text_encoder.*``: BLIP's BERT with a cross-attention block in every layer
  (``models/BLIP/med.py``, ``BertModel(add_pooling_layer=False)``), whose parameter names are
  those of transformers' ``BlipTextModel``; its cross-attention keys and values read the ViT width
  (BLIP sets ``encoder_width`` to the vision width, whatever the JSON says).
* ``mlp.layers.{0,2,4,6,7}``: the reward head (see :mod:`dance_imagereward.model`).

It also holds ``blip.vision_proj``, ``blip.text_proj`` (BLIP's contrastive projections) and the
``blip.text_encoder.embeddings.position_ids`` buffer, which the score never reads
(:data:`UNUSED_KEYS`). A checkpoint saved from a DistributedDataParallel-wrapped model (as
ImageReward's training script does when distributed) has every key prefixed with ``module.``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dance.errors import FileFault, ModelLayoutError
from dance.files import check_finite, first_line, read_json, torch_load_error

CHECKPOINT_FILE = "ImageReward.pt"
SAFETENSORS_FILE = "ImageReward.safetensors"
MED_CONFIG_FILE = "med_config.json"
DEFAULT_REPO = "THUDM/ImageReward"
# Where ``ImageReward.load`` downloads the two files (its ``download_root`` default).
LEGACY_DIR = Path("~/.cache/ImageReward")
WEIGHTS_HINT = (
    "download ImageReward.pt and med_config.json from https://huggingface.co/THUDM/ImageReward "
    "on a machine with network access"
)

# BLIP's ViTs (create_vit "base": 768 wide, 12 heads; "large": 1024 wide, 16 heads) all use 64-dim
# heads; the released file has no vision config, so the head count follows from the width.
VISION_HEAD_DIM = 64
VISION_LAYER_NORM_EPS = 1e-6  # vit.py: partial(nn.LayerNorm, eps=1e-6)

VISION_PREFIX = "blip.visual_encoder."
TEXT_PREFIX = "blip.text_encoder."
HEAD_PREFIX = "mlp.layers."
# Released keys the score does not read: BLIP's contrastive projections and a buffer of arange.
UNUSED_KEYS = frozenset(
    {
        "blip.vision_proj.weight",
        "blip.vision_proj.bias",
        "blip.text_proj.weight",
        "blip.text_proj.bias",
        "blip.text_encoder.embeddings.position_ids",
    }
)

# BLIP ViT names -> transformers BlipVisionModel names.
_VISION_TOP = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
_VISION_BLOCK = {
    "norm1": "layer_norm1",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "norm2": "layer_norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")


def module_key(released: str) -> str | None:
    """The :class:`~dance_imagereward.model.ImageRewardModel` key of a released key.

    ``None`` for the keys the score does not use (:data:`UNUSED_KEYS`). Raises ModelLayoutError
    for a key that belongs to no part of ImageReward.
    """
    if released in UNUSED_KEYS:
        return None
    if released.startswith(VISION_PREFIX):
        rest = released[len(VISION_PREFIX) :]
        if rest in _VISION_TOP:
            return "vision." + _VISION_TOP[rest]
        match = _BLOCK_KEY.fullmatch(rest)
        if match and match.group(2) in _VISION_BLOCK:
            index, part, kind = match.groups()
            return f"vision.encoder.layers.{index}.{_VISION_BLOCK[part]}.{kind}"
    elif released.startswith(TEXT_PREFIX):
        # med.py's BertModel and transformers' BlipTextModel name their parameters alike.
        return "text." + released[len(TEXT_PREFIX) :]
    elif released.startswith(HEAD_PREFIX):
        return "head.layers." + released[len(HEAD_PREFIX) :]
    raise ModelLayoutError(f"unexpected key '{released}' in the ImageReward checkpoint")


def map_state_dict(released: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released state dict renamed for :class:`~dance_imagereward.model.ImageRewardModel`
    (unused keys dropped, a ``module.`` prefix on every key removed)."""
    keys = list(released)
    strip = bool(keys) and all(k.startswith("module.") for k in keys)
    mapped: dict[str, torch.Tensor] = {}
    for key, value in released.items():
        target = module_key(key[len("module.") :] if strip else key)
        if target is not None:
            mapped[target] = value
    return mapped


# -- architecture from the checkpoint and med_config.json ----------------------------------------


def _tensor(state: Mapping[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    if key not in state:
        raise ModelLayoutError(f"{where}: key '{key}' is missing; is this ImageReward.pt?")
    return state[key]


def vision_config(state: Mapping[str, torch.Tensor], where: str = "ImageReward checkpoint"):
    """transformers ``BlipVisionConfig`` of the ViT in a mapped state dict (from tensor shapes)."""
    from transformers import BlipVisionConfig

    width = _tensor(state, "vision.embeddings.class_embedding", where).shape[-1]
    patch = _tensor(state, "vision.embeddings.patch_embedding.weight", where).shape[-1]
    positions = _tensor(state, "vision.embeddings.position_embedding", where).shape[1]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ModelLayoutError(f"{where}: {positions - 1} patch positions are not a square grid")
    layers = {int(k.split(".")[3]) for k in state if k.startswith("vision.encoder.layers.")}
    if layers != set(range(len(layers))) or not layers:
        raise ModelLayoutError(f"{where}: ViT blocks {sorted(layers)} are not 0..N-1")
    if width % VISION_HEAD_DIM:
        raise ModelLayoutError(f"{where}: ViT width {width} is not a multiple of 64-dim heads")
    mlp = _tensor(state, "vision.encoder.layers.0.mlp.fc1.weight", where).shape[0]
    return BlipVisionConfig(
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=len(layers),
        num_attention_heads=width // VISION_HEAD_DIM,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",  # timm's nn.GELU: the exact erf form
        layer_norm_eps=VISION_LAYER_NORM_EPS,
        attention_dropout=0.0,
    )


def text_config(med: Mapping[str, Any], encoder_width: int, where: str = MED_CONFIG_FILE):
    """transformers ``BlipTextConfig`` of BLIP's BERT from ``med_config.json``.

    ``is_decoder=True`` only makes transformers build the cross-attention blocks; the forward
    pass still uses the bidirectional mask of ImageReward's encoder call.
    """
    from transformers import BlipTextConfig

    missing = [
        k
        for k in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
        )
        if k not in med
    ]
    if missing:
        raise ModelLayoutError(f"{where}: missing {', '.join(missing)}; is this BLIP's med config?")
    if med.get("position_embedding_type", "absolute") != "absolute":
        raise ModelLayoutError(f"{where}: only absolute position embeddings are supported")
    if not med.get("add_cross_attention", False):
        raise ModelLayoutError(f"{where}: ImageReward's text encoder needs add_cross_attention")
    return BlipTextConfig(
        vocab_size=med["vocab_size"],
        hidden_size=med["hidden_size"],
        encoder_hidden_size=encoder_width,
        intermediate_size=med["intermediate_size"],
        num_hidden_layers=med["num_hidden_layers"],
        num_attention_heads=med["num_attention_heads"],
        max_position_embeddings=med["max_position_embeddings"],
        hidden_act=med.get("hidden_act", "gelu"),
        layer_norm_eps=med.get("layer_norm_eps", 1e-12),
        pad_token_id=med.get("pad_token_id", 0),
        # Generation ids BlipTextConfig defaults to bert-base's; encoding never reads them.
        bos_token_id=None,
        eos_token_id=None,
        sep_token_id=None,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        is_decoder=True,
    )


def read_med_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelLayoutError(f"the ImageReward med config {path} does not exist")
    return read_json(path, "ImageReward med config")


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of ``ImageReward.pt`` (``torch.load(weights_only=True)``: no arbitrary pickle) or
    of a safetensors file with the same keys."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a foreign, corrupt or truncated file: say which and why
        if path.suffix == ".safetensors":
            raise FileFault(
                f"cannot read the ImageReward checkpoint {path}: the file is corrupt or truncated"
                f" ({first_line(err)})"
            ) from None
        raise torch_load_error(err, f"the ImageReward checkpoint {path}") from None
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ModelLayoutError(f"{path} is not a state dict of tensors (ImageReward.pt's layout)")
    check_finite(state.items(), path)
    return dict(state)


# -- finding the files ---------------------------------------------------------------------------


def _in_hf_cache(repo: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, filename)
    except ValueError:  # not a valid repo id: it was meant as a path
        return None
    return Path(found) if isinstance(found, str) else None


def _checkpoint_in(directory: Path) -> Path | None:
    for name in (SAFETENSORS_FILE, CHECKPOINT_FILE):
        if (directory / name).is_file():
            return directory / name
    return None


def find_checkpoint(model: str) -> Path:
    """``model`` is a checkpoint file, a directory holding ``ImageReward.pt`` (or
    ``ImageReward.safetensors``), or a Hub repo id found in the local Hugging Face cache (the
    default repo also in ``~/.cache/ImageReward``, where ``ImageReward.load`` puts it)."""
    path = Path(os.path.expanduser(model))
    if path.is_file():
        return path
    if path.is_dir():
        found = _checkpoint_in(path)
        if found is None:
            raise ModelLayoutError(
                f"no {CHECKPOINT_FILE} in {path}; set the imagereward option `model` to the "
                f"checkpoint file, or {WEIGHTS_HINT}"
            )
        return found
    found = _in_hf_cache(model, CHECKPOINT_FILE)
    if found is None and model == DEFAULT_REPO:
        found = _checkpoint_in(LEGACY_DIR.expanduser())
    if found is None:
        raise ModelLayoutError(
            f"ImageReward checkpoint '{model}' is not a file, a directory or a repo in the local "
            f"Hugging Face cache; set the imagereward option `model` (e.g. "
            f"rewards.imagereward.model=/path/to/{CHECKPOINT_FILE}), or {WEIGHTS_HINT}"
        )
    return found


def find_med_config(checkpoint: Path, med_config: str | None) -> Path:
    """``med_config`` when given, else ``med_config.json`` next to the checkpoint (the Hub repo
    and ``ImageReward.load``'s download directory keep the two files together)."""
    if med_config:
        path = Path(os.path.expanduser(med_config))
        if path.is_dir():
            path = path / MED_CONFIG_FILE
        if not path.is_file():
            raise ModelLayoutError(
                f"ImageReward med config {path} does not exist; set the imagereward option "
                f"`med_config` to BLIP's {MED_CONFIG_FILE}, or {WEIGHTS_HINT}"
            )
        return path
    beside = checkpoint.parent / MED_CONFIG_FILE
    if not beside.is_file():
        raise ModelLayoutError(
            f"no {MED_CONFIG_FILE} next to {checkpoint}; set the imagereward option `med_config` "
            f"(e.g. rewards.imagereward.med_config=/path/to/{MED_CONFIG_FILE}), or {WEIGHTS_HINT}"
        )
    return beside
