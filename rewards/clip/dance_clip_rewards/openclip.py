"""open_clip models for the rewards: architecture by name, weights from a local file.

The architecture comes from open_clip's model config (``ViT-H-14``, ``ViT-L-14``, ...), built with
``pretrained=None`` so that open_clip never downloads; the weights are then loaded from a file with
:func:`dance_clip_rewards.weights.load_state_dict`. An open_clip pretrained tag (``openai``,
``dfn5b``, ...) supplies what the weights file does not say: whether the towers use QuickGELU, the
preprocessing (mean, std, resize mode) and where the file lives on the Hugging Face hub.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dance.errors import ConfigError, did_you_mean
from dance.interfaces import Runtime
from dance_clip_rewards.weights import load_into, load_state_dict

# File names open_clip publishes its weights under on the hub, safest first.
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")


def check_offline(model_name: str, option: str) -> None:
    """Raise a ConfigError naming ``option`` when open_clip would download something to build
    ``model_name``: a config from the Hub (``hf-hub:``), a Hugging Face tokenizer or text tower
    that is not in the local cache (``ViT-B-16-SigLIP``, ``roberta-ViT-B-32``), or a SigLIP
    vocabulary that open_clip fetches from a URL. dance never downloads; the message says what
    to fetch beforehand."""
    import open_clip

    if model_name.startswith("hf-hub:"):
        raise ConfigError(
            f"{option} '{model_name}' makes open_clip fetch its config from the Hugging Face Hub,"
            " and dance never downloads: use an open_clip architecture name (see"
            " open_clip.list_models(), e.g. ViT-H-14) with a local checkpoint file."
        )
    config = open_clip.get_model_config(model_name)
    if config is None:
        return  # unknown names are reported by pretrained_config
    text_cfg = config.get("text_cfg", {})
    needs = {
        "tokenizer": text_cfg.get("hf_tokenizer_name", ""),
        "text tower": text_cfg.get("hf_model_name", ""),
    }
    for part, repo in needs.items():
        if repo and not _in_hf_cache(repo):
            raise ConfigError(
                f"{option} '{model_name}': open_clip takes its {part} from the Hugging Face repo"
                f" '{repo}', which is not in the local cache, and dance never downloads; fetch it"
                f" beforehand (`hf download {repo}`) or choose an architecture whose tokenizer and"
                " text tower ship with open_clip (e.g. ViT-H-14)."
            )
    if "siglip" in model_name.lower() and not needs["tokenizer"]:
        raise ConfigError(
            f"{option} '{model_name}': open_clip downloads the SigLIP vocabulary from a URL, and"
            " dance never downloads; choose an architecture whose tokenizer ships with open_clip"
            " (e.g. ViT-H-14)."
        )


def _in_hf_cache(repo: str) -> bool:
    """Whether the local Hugging Face cache holds ``repo``'s config (no network)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "tokenizer_config.json"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str) and Path(found).is_file():
            return True
    return False


def pretrained_config(model_name: str, tag: str, option: str = "model") -> dict[str, Any]:
    """open_clip's table entry for ``(model_name, tag)``; ``{}`` for no tag; ConfigError (naming
    ``option``) if the architecture or the tag is unknown to open_clip or the architecture
    needs a download (:func:`check_offline`)."""
    import open_clip

    check_offline(model_name, option)
    if open_clip.get_model_config(model_name) is None:
        known = open_clip.list_models()
        raise ConfigError(
            f"unknown open_clip model '{model_name}'.{did_you_mean(model_name, known)}"
        )
    if not tag:
        return {}
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ConfigError(
            f"open_clip has no pretrained tag '{tag}' for '{model_name}' "
            f"(known: {', '.join(tags) or 'none'})."
        )
    return dict(cfg)


def hub_files(tag_cfg: dict[str, Any]) -> dict[str, Sequence[str]]:
    """Where the tag's weights live in the Hugging Face cache: ``{repo_id: file names}``."""
    repo = (tag_cfg.get("hf_hub") or "").strip("/")
    return {repo: HUB_WEIGHT_FILES} if repo else {}


@dataclass
class OpenClip:
    """A frozen open_clip model with its tokenizer and preprocess config."""

    model: Any
    tokenizer: Any
    preprocess_cfg: dict[str, Any]
    device: torch.device
    dtype: torch.dtype

    def image_features(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings (fp32) of preprocessed pixels ``[N, 3, h, w]``."""
        features = self.model.encode_image(pixels.to(self.device, self.dtype)).float()
        return F.normalize(features, dim=-1) if normalize else features

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (fp32), tokenised with the model's tokenizer."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)


class _DropRandomInitNotice(logging.Filter):
    """open_clip logs "No pretrained weights loaded ... initialized randomly" when built with
    pretrained=None; here the weights are loaded right after, so that line would mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _quiet_random_init() -> Iterator[None]:
    root = logging.getLogger()
    notice = _DropRandomInitNotice()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


def build_open_clip(
    model_name: str, tag: str, checkpoint: Path, runtime: Runtime, what: str, option: str = "model"
) -> OpenClip:
    """Build ``model_name`` without weights, load ``checkpoint`` into it, freeze it and move it to
    the runtime's device in ``runtime.frozen_dtype``. ``option`` names the model option in
    messages."""
    import open_clip

    tag_cfg = pretrained_config(model_name, tag, option)
    state = load_state_dict(checkpoint, what)
    with _quiet_random_init():
        model = open_clip.create_model(
            model_name,
            pretrained=None,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            force_preprocess_cfg={k: tag_cfg[k] for k in PREPROCESS_KEYS if k in tag_cfg},
            pretrained_text=False,
        )
    load_into(model, state, f"{what} '{checkpoint}'")
    model.eval().requires_grad_(False)
    model.to(device=runtime.device, dtype=runtime.frozen_dtype)
    return OpenClip(
        model=model,
        tokenizer=open_clip.get_tokenizer(model_name),
        preprocess_cfg=dict(open_clip.get_model_preprocess_cfg(model)),
        device=torch.device(runtime.device),
        dtype=runtime.frozen_dtype,
    )
