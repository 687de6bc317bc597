"""How many CPU threads torch uses, chosen deliberately rather than left to torch's default.

torch starts one intra-op thread per core. When other jobs share those cores, every parallel
operation waits for its slowest thread to be scheduled again: on the 2-core machine of
docs/performance.md, with other jobs running, a demo iteration took 9x longer at 2 threads than at
1. The order of precedence:

1. ``--threads N`` on the command line;
2. the ``OMP_NUM_THREADS`` environment variable, when set (torchrun sets it to 1 for several
   processes per machine);
3. for runs on the CPU: half the CPUs this process may use, at least 1 (1 on a 2-core machine).
   Runs on a GPU keep torch's default, since the CPU then only feeds the device.
"""

from __future__ import annotations

import os

import torch

from dance.errors import UsageError

ENV_VAR = "OMP_NUM_THREADS"


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def default_cpu_threads() -> int:
    """Half the available CPUs, at least 1: leaves room for other work, and hyper-threaded
    siblings add little to the matrix arithmetic that dominates an iteration."""
    return max(1, available_cpus() // 2)


def choose_threads(requested: int | None, device: torch.device) -> tuple[int | None, str]:
    """The thread count to set (None: leave torch's) and where it comes from, for messages."""
    if requested is not None:
        if requested < 1:
            raise UsageError(f"--threads must be at least 1, got {requested}.")
        return requested, "--threads"
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise UsageError(
                f"{ENV_VAR}={env!r} is not a whole number of threads; set it to 1 or more, "
                "or unset it."
            )
        return int(env), ENV_VAR
    if device.type != "cpu":
        return None, "torch's default"
    return default_cpu_threads(), "default for CPU runs: half the CPUs"


def use_threads(requested: int | None, device: torch.device) -> str:
    """Set torch's intra-op thread count as :func:`choose_threads` says; returns a one-line
    description such as ``1 CPU thread (default for CPU runs: half the CPUs)``."""
    count, source = choose_threads(requested, device)
    if count is not None:
        torch.set_num_threads(count)
    n = torch.get_num_threads()
    return f"{n} CPU thread{'s' if n != 1 else ''} ({source})"
