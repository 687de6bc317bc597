"""Entry point of the FLUX plugin: registers the ``flux`` and ``flux-kontext`` policies."""

from __future__ import annotations

from collections.abc import Callable

import dance
from dance_flux.kontext import FluxKontextPolicy
from dance_flux.policy import FluxPolicy


@dance.hookimpl
def register_policies(register: Callable[[type], None]) -> None:
    register(FluxPolicy)
    register(FluxKontextPolicy)


@dance.hookimpl
def register_benchmark_specs(register: Callable[[object], None]) -> None:
    # Imported here: only the GPU suite (benchmarks/gpu_suite.py) asks for it.
    from dance_flux.bench_spec import benchmark_spec, kontext_benchmark_spec

    register(benchmark_spec())
    register(kontext_benchmark_spec())
