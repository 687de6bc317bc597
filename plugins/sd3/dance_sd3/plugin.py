"""Entry point of the Stable Diffusion 3 plugin: registers the ``sd3`` policy with dance."""

from __future__ import annotations

from collections.abc import Callable

import dance
from dance_sd3.policy import SD3Policy


@dance.hookimpl
def register_policies(register: Callable[[type], None]) -> None:
    register(SD3Policy)


@dance.hookimpl
def register_benchmark_specs(register: Callable[[object], None]) -> None:
    # Imported here: only the GPU suite (benchmarks/gpu_suite.py) asks for it.
    from dance_sd3.bench_spec import benchmark_spec

    register(benchmark_spec())
