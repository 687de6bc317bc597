"""The ImageReward network on transformers' BLIP modules, loaded from the released checkpoint.

Follows ``ImageReward.score`` in THUDM/ImageReward (``ImageReward/ImageReward.py``): the ViT
embeds the image (all tokens, after its final LayerNorm); BLIP's BERT reads the prompt with every
layer cross-attending to those embeddings (all image tokens visible); the hidden state of the first
token ([CLS]) goes, in fp32, through the MLP head; the head's output is normalised with the mean and
std ImageReward measured on its training data.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dance.errors import ModelLayoutError
from dance_imagereward.layout import (
    map_state_dict,
    read_checkpoint,
    read_med_config,
    text_config,
    vision_config,
)

# ImageReward.__init__: self.mean and self.std.
SCORE_MEAN = 0.16717362830052426
SCORE_STD = 1.0333394966054072
# ImageReward's MLP(768): Linear 768->1024, Dropout(0.2), ->128, Dropout(0.2), ->64, Dropout(0.1),
# ->16, ->1, with no activation between the linear layers (the ReLUs are commented out there).
HEAD_SIZES = (1024, 128, 64, 16, 1)
HEAD_DROPOUT = (0.2, 0.2, 0.1)


class RewardHead(nn.Module):
    """ImageReward's MLP head; its ``layers`` indices (0, 2, 4, 6, 7 hold the linear layers) match
    the released ``mlp.layers.*`` keys. Dropout does nothing: the model always runs in eval mode."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        sizes = (in_features, *HEAD_SIZES)
        modules: list[nn.Module] = []
        for i in range(len(HEAD_SIZES)):
            modules.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(HEAD_DROPOUT):
                modules.append(nn.Dropout(HEAD_DROPOUT[i]))
        self.layers = nn.Sequential(*modules)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class ImageRewardModel(nn.Module):
    """BLIP ViT + BLIP BERT with cross-attention + the reward head; :meth:`forward` gives the
    normalised ImageReward score."""

    def __init__(self, vision_config, text_config) -> None:
        from transformers import BlipTextModel, BlipVisionModel

        super().__init__()
        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.head = RewardHead(text_config.hidden_size)
        self.eval()

    @property
    def image_size(self) -> int:
        return self.vision.config.image_size

    def to_runtime(self, device: torch.device, dtype: torch.dtype) -> ImageRewardModel:
        """Move to ``device``; the encoders in ``dtype``, the head in fp32 (ImageReward casts the
        text feature to float before its MLP)."""
        self.to(device=device, dtype=dtype)
        self.head.float()
        return self

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Scores ``[N]`` (fp32) of preprocessed images ``[N, 3, S, S]`` with their tokenised
        prompts ``[N, L]``."""
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=pixels.device)
        text = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
            return_dict=True,
        )
        features = text.last_hidden_state[:, 0, :].float()
        raw = self.head(features).squeeze(-1)
        return (raw - SCORE_MEAN) / SCORE_STD


def _no_init_weights():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def load_model(checkpoint: Path, med_config: Path) -> ImageRewardModel:
    """Build the model from ``med_config.json`` and the checkpoint's shapes, and load every
    weight (fp32, CPU; see :meth:`ImageRewardModel.to_runtime`). Parameters are frozen."""
    state = map_state_dict(read_checkpoint(checkpoint))
    vision = vision_config(state, where=str(checkpoint))
    text = text_config(read_med_config(med_config), vision.hidden_size, where=str(med_config))
    with _no_init_weights():  # every weight is overwritten below; skip the random init
        model = ImageRewardModel(vision, text)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelLayoutError(
            f"{checkpoint} does not match ImageReward's layout with {med_config}: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    wrong = [k for k in expected if expected[k].shape != state[k].shape]
    if wrong:
        k = wrong[0]
        raise ModelLayoutError(
            f"{checkpoint}: '{k}' has shape {tuple(state[k].shape)}, expected "
            f"{tuple(expected[k].shape)} from {med_config} ({len(wrong)} mismatched tensors)"
        )
    model.load_state_dict(state, strict=True)
    model.requires_grad_(False)
    return model
