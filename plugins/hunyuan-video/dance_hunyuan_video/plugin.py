"""Entry point of the plugin: registers the ``hunyuan-video`` and ``skyreels-i2v`` policies."""

from __future__ import annotations

from collections.abc import Callable

import dance
from dance_hunyuan_video.hunyuan import HunyuanVideoPolicy
from dance_hunyuan_video.skyreels import SkyReelsI2VPolicy


@dance.hookimpl
def register_policies(register: Callable[[type], None]) -> None:
    register(HunyuanVideoPolicy)
    register(SkyReelsI2VPolicy)


@dance.hookimpl
def register_benchmark_specs(register: Callable[[object], None]) -> None:
    # Imported here: only the GPU suite (benchmarks/gpu_suite.py) asks for it.
    from dance_hunyuan_video import bench_spec

    register(bench_spec.hunyuan_video_spec())
    register(bench_spec.skyreels_i2v_spec())
