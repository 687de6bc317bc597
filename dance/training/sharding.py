"""FSDP2 sharding of the trained network, and the gradient work that goes with it.

Under torchrun, :func:`shard_policy` applies ``torch.distributed.fsdp.fully_shard`` to each
transformer block the policy declares (``Policy.block_classes``), then to the root of every network
``Policy.trainable_modules()`` returns: each rank then keeps 1/world_size of the trained weights,
of their gradients and of the optimizer states built on them. LoRA and full fine-tunes shard alike
(the frozen base weights of a LoRA are sharded with their blocks too). A full fine-tune's frozen
reference copy (the KL term) is sharded the same way, never replicated. Frozen encoders, VAE and
reward models are not touched. One process wraps nothing.

Gradient convention (shared with the loss normalisation of the update): the loss of an optimizer
step is normalised by the global number of trained pairs, so gradients are SUMMED over ranks, not
averaged. FSDP's reduce-scatter therefore runs with a divide factor of 1 and plain SUM (gloo has no
pre-multiplied sum); trainable parameters that no sharded module holds are all-reduced with SUM by
:func:`sum_replicated_gradients`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import torch
from torch.distributed.tensor import DTensor

import dance.distributed as dist
from dance.interfaces import Policy, Runtime

logger = logging.getLogger(__name__)


def shard_policy(policy: Policy, runtime: Runtime, cpu_offload: bool = False) -> bool:
    """Shard the policy's trained networks (and a full fine-tune's reference copy) over all ranks.

    Returns whether anything was sharded: False for one process, or for a policy that names no
    trainable modules (its parameters then stay replicated and :func:`sum_replicated_gradients`
    sums their gradients). Call it before building the optimizer: sharding replaces parameters.
    """
    modules = policy.trainable_modules()
    if not dist.is_distributed() or dist.world_size() < 2:
        return False
    if not modules:
        logger.info(
            "policy '%s' names no trainable modules: its parameters stay replicated on every rank",
            policy.name,
        )
        return False
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

    cuda = runtime.device.type == "cuda"
    mesh = init_device_mesh(runtime.device.type, (dist.world_size(),))
    if cuda:
        # bf16 compute, fp32 gradient reduction, fp32 master weights (the sharded parameters keep
        # their own dtype). Inputs are not cast: the policy passes sigma-valued timesteps that bf16
        # would round; autocast already runs the matmuls in bf16.
        mixed = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False
        )
    else:
        mixed = MixedPrecisionPolicy()  # CPU runs compute in the weights' own dtype (fp32)
    offload: OffloadPolicy = OffloadPolicy()
    if cpu_offload:
        if cuda:
            offload = CPUOffloadPolicy(pin_memory=True)
        else:
            logger.info("trainer.fsdp_cpu_offload has no effect on %s", runtime.device)
    targets = list(modules)
    reference = _full_finetune_reference(policy)
    if reference is not None:
        targets.append(reference)
    for module in targets:
        _shard_module(module, policy.block_classes, mesh, mixed, offload)
    return True


def _full_finetune_reference(policy: Policy) -> torch.nn.Module | None:
    """The frozen copy a full fine-tune keeps for the KL term (prepared before sharding)."""
    from dance.models.finetune import FinetunedPolicy

    if isinstance(policy, FinetunedPolicy):
        return policy.trained.reference_model
    return None


def _shard_module(
    module: torch.nn.Module,
    block_classes: Sequence[type[torch.nn.Module]],
    mesh: object,
    mixed: object,
    offload: object,
) -> None:
    from torch.distributed.fsdp import FSDPModule, fully_shard

    classes = tuple(block_classes)
    # Innermost first: a block class nested in another block is its own FSDP unit.
    blocks = [m for m in module.modules() if classes and isinstance(m, classes) and m is not module]
    for block in reversed(blocks):
        fully_shard(block, mesh=mesh, mp_policy=mixed, offload_policy=offload)
    fully_shard(module, mesh=mesh, mp_policy=mixed, offload_policy=offload)
    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            # SUM over ranks (see the module docstring): no division, and only SUM collectives.
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)


def reshard(modules: Iterable[torch.nn.Module]) -> None:
    """Free the gathered (unsharded) parameters FSDP2 keeps after a forward without gradients
    (the root module keeps them for the backward it expects): after the sharded parameters are
    overwritten in place (weights swapped for sampling), the next forward must gather them
    again. Nothing to do for modules that are not sharded."""
    from torch.distributed.fsdp import FSDPModule

    for module in modules:
        for unit in module.modules():
            if isinstance(unit, FSDPModule):
                unit.reshard()


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``tensor``: the local shard of a DTensor, else the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of this rank's parts of ``tensors`` (shards of DTensors, whole plain tensors)."""
    return sum(local_tensor(t).numel() * local_tensor(t).element_size() for t in tensors)


def sum_replicated_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """All-reduce (SUM) the gradients of trainable parameters that FSDP does not hold (a policy
    without trainable modules). Sharded parameters were already reduced by FSDP."""
    if not dist.is_distributed():
        return
    for p in params:
        if p.grad is not None and not isinstance(p.grad, DTensor):
            torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)


@torch.no_grad()
def clip_gradients(params: Sequence[torch.nn.Parameter], max_norm: float) -> float:
    """Scale the gradients so that their global L2 norm is at most ``max_norm``; returns the norm
    before clipping. Shards of DTensor gradients are disjoint parts of one tensor, so their squared
    norms are summed over ranks; replicated gradients are equal on every rank and counted once.
    Follows ``torch.nn.utils.clip_grad_norm_`` (coefficient max_norm / (norm + 1e-6), at most 1)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    device = local_tensor(grads[0]).device
    sharded = torch.zeros((), dtype=torch.float64, device=device)
    replicated = torch.zeros((), dtype=torch.float64, device=device)
    any_sharded = False
    for g in grads:
        squares = local_tensor(g).double().pow(2).sum().to(device)
        if isinstance(g, DTensor):
            sharded += squares
            any_sharded = True
        else:
            replicated += squares
    if any_sharded and dist.is_distributed():
        torch.distributed.all_reduce(sharded, op=torch.distributed.ReduceOp.SUM)
    norm = math.sqrt(float(sharded + replicated))
    if math.isfinite(max_norm):
        coef = min(1.0, max_norm / (norm + 1e-6))
        if coef < 1.0:
            for g in grads:
                local_tensor(g).mul_(coef)
    return norm
