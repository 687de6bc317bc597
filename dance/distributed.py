"""Process-group helpers: the same code runs under torchrun and as a single process.

NCCL on GPU, gloo on CPU. Every helper is a no-op (or the identity) for one process, and a
collective otherwise: every rank must call it at the same point, in the same order.

Two rules keep a job of several processes from hanging:

- a decision that ranks share (run the "before" evaluation, stop after a signal) is taken once,
  on rank 0 or by a reduction over all ranks, and every rank follows it (:func:`broadcast_object`,
  :func:`any_rank`);
- code that can fail on one rank only (a reward model, a user's plugin) runs inside
  :func:`fail_together`, which raises the failure on every rank instead of leaving the others
  waiting in their next collective until the timeout.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any, NoReturn

import torch
import torch.distributed as torch_dist

from dance.errors import RewardError, RunError, UsageError


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


def init_from_env(timeout_s: float | None = None) -> None:
    """Join the process group torchrun describes in the environment; no-op for one process.

    ``timeout_s`` bounds every collective, including the wait for ranks that start late (the
    trainer's ``distributed_timeout``); None keeps PyTorch's default.
    """
    if is_distributed() or int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    timeout = datetime.timedelta(seconds=timeout_s) if timeout_s else None
    global _joined_a_group
    _joined_a_group = True  # set first: a failed join also leaves gloo/NCCL threads behind
    try:
        torch_dist.init_process_group(backend=backend, timeout=timeout)
    except (RuntimeError, ValueError) as exc:  # the store's timeout, a refused connection...
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(
            f"rank {os.environ.get('RANK', '?')} of {os.environ.get('WORLD_SIZE')} could not "
            f"join the process group at {where} within trainer.distributed_timeout = "
            f"{timeout_s} s ({reason}); start every process, with the same MASTER_ADDR and "
            "MASTER_PORT"
        ) from exc


def shutdown() -> None:
    """Leave the process group (a local operation, safe after an error on another rank)."""
    if is_distributed():
        torch_dist.destroy_process_group()


_joined_a_group = False  # whether this process ever tried to join a group of several


def joined_a_group() -> bool:
    """Whether this process ever tried to join a group of several (it then ends through
    :func:`end_process`)."""
    return _joined_a_group


def end_process(code: int) -> NoReturn:
    """End this process with exit status ``code``.

    A single process simply raises SystemExit. A rank of a job of several processes leaves the
    group, waits for its own threads, runs the ``atexit`` handlers (loggers' and plugins'
    clean-up), flushes stdout and stderr, and then ends with ``os._exit``, skipping the
    interpreter's finalization. The backends' C++ threads (gloo's workers, which free the
    tensors of finished collectives) can still need the GIL while Python finalizes; Python then
    stops such a thread with pthread_exit, which aborts the process through C++'s
    std::terminate ("terminate called without an active exception", SIGABRT) after the rank
    has finished its work (seen in CI, rarely, on a loaded machine, on a rank that had
    finished its run). Python's multiprocessing ends its workers with ``os._exit`` too.
    """
    if not _joined_a_group:
        sys.exit(code)
    try:
        shutdown()
    except Exception as exc:  # leaving the group must not change how the run ended
        print(f"note: leaving the process group failed: {exc}", file=sys.stderr)
    for thread in threading.enumerate():  # what the interpreter would wait for at exit
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken pipe: nothing left to say
            stream.flush()
    os._exit(code)


def _collective_device() -> torch.device:
    """Where collective tensors live: the GPU for NCCL, the CPU for gloo."""
    if torch_dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor [n, ...]`` of every rank along dim 0, in rank order (equal n).

    The result is on ``tensor``'s device; it travels on the backend's device.
    """
    if not is_distributed():
        return tensor
    moved = tensor.contiguous().to(_collective_device())
    parts = [torch.empty_like(moved) for _ in range(world_size())]
    torch_dist.all_gather(parts, moved)
    return torch.cat(parts).to(tensor.device)


def gather_to_main(tensor: torch.Tensor) -> torch.Tensor | None:
    """Every rank's ``tensor [n, ...]`` (equal n) in rank order on rank 0, on the CPU; None on
    the other ranks. Gathered one row at a time, so that large media (videos) never occupy
    more than ``world_size`` rows of device memory at once."""
    if not is_distributed():
        return tensor.cpu()
    device = _collective_device()
    per_row = []
    for i in range(tensor.shape[0]):
        row = tensor[i : i + 1].contiguous().to(device)
        parts = [torch.empty_like(row) for _ in range(world_size())]
        torch_dist.all_gather(parts, row)
        per_row.append([p.cpu() for p in parts] if is_main() else None)
    if not is_main():
        return None
    if not per_row:
        return tensor.cpu()
    by_rank = [torch.cat([row[r] for row in per_row]) for r in range(world_size())]
    return torch.cat(by_rank)


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``tensor`` reduced element-wise over ranks ('sum', 'min' or 'max'); a new tensor on the
    input's device."""
    if not is_distributed():
        return tensor.clone()
    ops = {
        "sum": torch_dist.ReduceOp.SUM,
        "min": torch_dist.ReduceOp.MIN,
        "max": torch_dist.ReduceOp.MAX,
    }
    moved = tensor.detach().to(_collective_device()).clone()
    torch_dist.all_reduce(moved, op=ops[op])
    return moved.to(tensor.device)


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one."""
    if not is_distributed():
        return flag
    return bool(all_reduce(torch.tensor([float(flag)]), "max").item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable) on every rank: for decisions taken once."""
    if not is_distributed():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_distributed():
        torch_dist.barrier()


def is_main() -> bool:
    return rank() == 0


# Errors re-raised with their own class on the ranks that did not fail; anything else becomes a
# RunError there (the failing rank keeps its original exception and traceback).
_SHARED_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls for cls in (RewardError, RunError, UsageError)
}


@contextlib.contextmanager
def fail_together(what: str) -> Iterator[None]:
    """Run the block on every rank; if it raises on any rank, raise on every rank.

    A collective at the end of the block: every rank reports success or its error
    (``all_gather_object``). The failing rank re-raises its own exception; the others raise
    the same class (RewardError, RunError, UsageError; RunError for any other exception) with
    the failing rank's message, so the whole job stops at once with that message instead of the
    others waiting in their next collective until ``distributed_timeout``. ``what`` names the
    phase in the message (e.g. "reward scoring").
    """
    error: Exception | None = None
    try:
        yield
    except Exception as exc:  # reported to every rank below, then raised again
        error = exc
    if not is_distributed():
        if error is not None:
            raise error
        return
    report = None
    if error is not None:  # the nearest shared class: a ConfigError travels as a UsageError
        shared = next((c.__name__ for c in type(error).__mro__ if c in _SHARED_ERRORS.values()), "")
        report = (shared, f"{type(error).__name__}: {error}" if not shared else str(error))
    reports: list[tuple[str, str] | None] = [None] * world_size()
    torch_dist.all_gather_object(reports, report)
    if error is not None:
        raise error
    for failed_rank, failure in enumerate(reports):
        if failure is not None:
            name, message = failure
            cls = _SHARED_ERRORS.get(name, RunError)
            raise cls(f"rank {failed_rank} failed during {what}: {message}")
