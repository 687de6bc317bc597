"""Entry point of the Qwen-Image plugin: registers the ``qwen-image`` policy with dance."""

from __future__ import annotations

from collections.abc import Callable

import dance
from dance_qwen_image.policy import QwenImagePolicy


@dance.hookimpl
def register_policies(register: Callable[[type], None]) -> None:
    register(QwenImagePolicy)


@dance.hookimpl
def register_benchmark_specs(register: Callable[[object], None]) -> None:
    # Imported here: only the GPU suite (benchmarks/gpu_suite.py) asks for it.
    from dance_qwen_image.bench_spec import benchmark_spec

    register(benchmark_spec())
