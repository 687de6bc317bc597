"""Estimating a network's training memory without weights or a GPU (the docs' GPU memory
estimates): build it on the meta device (shapes only: no memory, no compute), run one training
forward, and add up every tensor autograd saves for the backward pass.

Attention is replaced by a stand-in that saves what a fused (flash / memory-efficient) kernel
keeps, q, k, v, the output and a log-sum-exp, never the L x L matrix; weights saved by layers are
not counted (they are in the weight budget). The result leaves out the backward pass's transient
buffers and the CUDA allocator's fragmentation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

GIB = 2**30


class FusedAttentionStandIn(torch.autograd.Function):
    """Saves what a fused attention kernel keeps for its backward pass."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], device=q.device, dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        raise NotImplementedError("shapes only")


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def saved_activation_bytes(network: torch.nn.Module, forward: Callable[[], Any]) -> int:
    """Bytes of the tensors autograd saves while ``forward()`` runs ``network`` (weights left
    out), with scaled-dot-product attention standing in for a fused kernel."""

    def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *a, **kw) -> Any:
        # Positional or keyword (diffusers' native attention backend passes keywords).
        return FusedAttentionStandIn.apply(query, key, value)

    saved: dict[int, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[id(tensor)] = tensor
        return tensor

    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = attention
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            forward()
    finally:
        F.scaled_dot_product_attention = original
    params = {id(p) for p in network.parameters()}

    def is_weight(t: torch.Tensor) -> bool:
        return id(t) in params or (t._base is not None and id(t._base) in params)

    return sum(t.numel() * t.element_size() for t in saved.values() if not is_weight(t))
