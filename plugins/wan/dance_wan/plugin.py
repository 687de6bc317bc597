"""Entry point of the plugin: registers the ``wan-t2v`` and ``wan-i2v`` policies."""

from __future__ import annotations

from collections.abc import Callable

import dance
from dance_wan.i2v import WanI2VPolicy
from dance_wan.t2v import WanT2VPolicy


@dance.hookimpl
def register_policies(register: Callable[[type], None]) -> None:
    register(WanT2VPolicy)
    register(WanI2VPolicy)


@dance.hookimpl
def register_benchmark_specs(register: Callable[[object], None]) -> None:
    # Imported here: only the GPU suite (benchmarks/gpu_suite.py) asks for it.
    from dance_wan import bench_spec

    register(bench_spec.wan_t2v_spec())
    register(bench_spec.wan_i2v_spec())
