"""Process-group helpers: the same code runs under torchrun and as a single process.

NCCL on GPU, gloo on CPU. Rewards and group ids are gathered across ranks so a group may span ranks.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as torch_dist


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def parse_device(text: str, option: str = "--device") -> torch.device:
    """The device ``text`` names (cpu, cuda, cuda:N, mps), checked against this machine: a name
    torch does not know, a GPU that is not there, or an index past the last GPU is a UsageError
    saying what exists, before anything loads."""
    from dance.errors import UsageError

    usage = f"use cpu, cuda or cuda:N, or leave {option} out to pick the GPU when there is one"
    try:
        device = torch.device(text.strip())
    except (RuntimeError, ValueError):
        raise UsageError(f"{option} '{text}' is not a device; {usage}.") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"{option} {text}: this machine has no usable CUDA GPU (torch.cuda.is_available()"
                f" is False); use {option} cpu or leave {option} out."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(
                f"{option} {text}: this machine has {count} CUDA device(s), cuda:0 to"
                f" cuda:{count - 1}; choose one of those."
            )
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"{option} {text}: MPS is not available on this machine; {usage}.")
        return device
    raise UsageError(f"{option} '{text}': dance does not run on {device.type} devices; {usage}.")


def init_from_env() -> None:
    """Join the process group torchrun describes in the environment; no-op for one process."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    torch_dist.init_process_group(backend=backend)


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor [n, ...]`` of every rank along dim 0, in rank order (equal n)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    torch_dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_reduce_mean(value: float, device: torch.device) -> float:
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch_dist.all_reduce(t)
    return t.item() / world_size()


def barrier() -> None:
    if is_distributed():
        torch_dist.barrier()


def is_main() -> bool:
    return rank() == 0
