"""Entry point of the Stable Diffusion plugin: registers the ``sd`` policy with dance."""

from __future__ import annotations

from collections.abc import Callable

import dance
from dance_sd.policy import SDPolicy


@dance.hookimpl
def register_policies(register: Callable[[type], None]) -> None:
    register(SDPolicy)


@dance.hookimpl
def register_benchmark_specs(register: Callable[[object], None]) -> None:
    # Imported here: only the GPU suite (benchmarks/gpu_suite.py) asks for it.
    from dance_sd.bench_spec import benchmark_spec

    register(benchmark_spec())
