"""An independent ImageReward for the tests: plain torch functions on the released state dict.

Written from THUDM/ImageReward's modules (``models/BLIP/vit.py``, ``models/BLIP/med.py``,
``ImageReward.py``), not from dance_imagereward: it reads the released key names directly, never
the key mapping or transformers' BLIP classes, and computes in float64. The preprocessing is
ImageReward's own torchvision pipeline on PIL images.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MEAN, STD = 0.16717362830052426, 1.0333394966054072
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def reference_transform(size: int = 224):
    """ImageReward's ``_transform(224)``: torchvision on a PIL image."""
    from torchvision.transforms import (
        CenterCrop,
        Compose,
        InterpolationMode,
        Normalize,
        Resize,
        ToTensor,
    )

    return Compose(
        [
            Resize(size, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(size),
            lambda image: image.convert("RGB"),
            ToTensor(),
            Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


def to_pil(image: torch.Tensor):
    """A [3, H, W] tensor in [0, 1] as the 8-bit PIL image a user would hand ImageReward."""
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def _ln(x, state, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], state[prefix + ".weight"], state[prefix + ".bias"], eps)


def _linear(x, state, prefix):
    return F.linear(x, state[prefix + ".weight"], state[prefix + ".bias"])


def vit_forward(state, pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """BLIP's VisionTransformer.forward: patch conv, [cls] + patches, + pos_embed, pre-norm blocks
    (LayerNorm eps 1e-6, exact GELU), final norm."""
    p = "blip.visual_encoder."
    weight = state[p + "patch_embed.proj.weight"]
    x = F.conv2d(pixels, weight, state[p + "patch_embed.proj.bias"], stride=weight.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = state[p + "cls_token"].expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + state[p + "pos_embed"][:, : x.shape[1] + 1]
    batch, tokens, width = x.shape
    d = width // heads
    depth = len({k.split(".")[3] for k in state if k.startswith(p + "blocks.")})
    for i in range(depth):
        b = f"{p}blocks.{i}."
        h = _ln(x, state, b + "norm1", 1e-6)
        qkv = _linear(h, state, b + "attn.qkv").reshape(batch, tokens, 3, heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * d**-0.5).softmax(dim=-1)
        h = (attn @ v).transpose(1, 2).reshape(batch, tokens, width)
        x = x + _linear(h, state, b + "attn.proj")
        h = _ln(x, state, b + "norm2", 1e-6)
        x = x + _linear(F.gelu(_linear(h, state, b + "mlp.fc1")), state, b + "mlp.fc2")
    return _ln(x, state, p + "norm", 1e-6)


def _bert_attention(x, context, mask, state, prefix, heads, eps):
    """med.py's BertAttention: post-norm multi-head attention with an additive mask."""
    batch, length, width = x.shape
    d = width // heads

    def split(t):
        return t.reshape(batch, t.shape[1], heads, d).transpose(1, 2)

    q = split(_linear(x, state, prefix + ".self.query"))
    k = split(_linear(context, state, prefix + ".self.key"))
    v = split(_linear(context, state, prefix + ".self.value"))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if mask is not None:
        scores = scores + mask
    h = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, width)
    h = _linear(h, state, prefix + ".output.dense")
    return _ln(h + x, state, prefix + ".output.LayerNorm", eps)


def bert_forward(state, med: dict, input_ids, attention_mask, image_embeds) -> torch.Tensor:
    """med.py's BertModel.forward in 'multimodal' mode: word + absolute position embeddings,
    LayerNorm; per layer self-attention (padding masked with -10000), cross-attention to every
    image token, GELU feed-forward; each sub-block post-norm with a residual."""
    p = "blip.text_encoder."
    eps, heads = med["layer_norm_eps"], med["num_attention_heads"]
    length = input_ids.shape[1]
    x = state[p + "embeddings.word_embeddings.weight"][input_ids]
    x = x + state[p + "embeddings.position_embeddings.weight"][:length]
    x = _ln(x, state, p + "embeddings.LayerNorm", eps)
    mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
    for i in range(med["num_hidden_layers"]):
        layer = f"{p}encoder.layer.{i}."
        x = _bert_attention(x, x, mask, state, layer + "attention", heads, eps)
        x = _bert_attention(x, image_embeds, None, state, layer + "crossattention", heads, eps)
        h = F.gelu(_linear(x, state, layer + "intermediate.dense"))
        h = _linear(h, state, layer + "output.dense")
        x = _ln(h + x, state, layer + "output.LayerNorm", eps)
    return x


def head_forward(state, features):
    """ImageReward's MLP: five linear layers, no activations (dropout is off in eval)."""
    for index in (0, 2, 4, 6, 7):
        features = _linear(features, state, f"mlp.layers.{index}")
    return features.squeeze(-1)


def reference_scores(state, med: dict, pixels, input_ids, attention_mask) -> torch.Tensor:
    """ImageReward.score for preprocessed ``pixels`` and token ids, in float64."""
    state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    width = state["blip.visual_encoder.cls_token"].shape[-1]
    image_embeds = vit_forward(state, pixels.double(), heads=width // 64)
    text = bert_forward(state, med, input_ids, attention_mask, image_embeds)
    return (head_forward(state, text[:, 0, :]) - MEAN) / STD
