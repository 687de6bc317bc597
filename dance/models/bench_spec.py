"""What a policy plugin tells the GPU suite (benchmarks/gpu_suite.py) about its model.

A policy plugin implements the ``register_benchmark_specs`` hook (see :mod:`dance.hookspecs`) and
registers one :class:`BenchmarkSpec` per policy it ships. The suite then measures every registered
policy at the published setting on full-size networks with random weights, without knowing the
model: the spec says

* which bundled recipe holds the published (DanceGRPO) setting, and what the benchmark changes
  in it (LoRA rank 128, gradient checkpointing on);
* the full-size configs of the trained network, the frozen encoders and the VAE, as config.json
  files shipped with the plugin (one per folder of the model's diffusers layout), and the
  published file each was written from;
* how to write a checkpoint in the model's diffusers layout (the plugin's tiny builder) and the
  tiny counterpart of the setting, for ``--tiny`` runs on CPU;
* how to build the plain diffusers pipeline over the policy's modules and call it at the same
  setting, for the rollout comparison.

Networks are built with random weights through :mod:`dance.models.random_weights`, which loads them
through the policy's own ``from_pretrained`` calls.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dance.errors import UsageError


@dataclass(frozen=True)
class BenchmarkSpec:
    """One policy's benchmark: its published setting, full-size configs and tiny counterpart."""

    # Registry name of the policy ("flux") and the model it stands for ("FLUX.1-dev").
    policy: str
    model: str
    # Bundled recipe with the published setting, and where its values come from.
    recipe: str
    setting_source: str
    # The full-size config of every network: {folder of the diffusers layout: shipped JSON file}.
    configs: Mapping[str, Path]
    # Where each config comes from: {folder: "repo/file (and what was changed)"}.
    config_sources: Mapping[str, str]
    # Writes a tiny checkpoint in the model's diffusers layout to the given folder; returns it.
    build_tiny: Callable[[Path], Path]
    # Dotted recipe overrides of the benchmark at full size ({"policy.lora_rank": 128}).
    overrides: Mapping[str, Any] = field(default_factory=dict)
    # Dotted overrides of the tiny counterpart (small resolution and frames for a CPU).
    tiny_overrides: Mapping[str, Any] = field(default_factory=dict)
    # Prompts one GPU rolls out per iteration in the published run (the group size comes from
    # the recipe): DanceGRPO draws one prompt per GPU for FLUX and the video models, four for SD;
    # fractional where a published run spreads groups over GPUs (Flow-GRPO's SD3.5: 1.5).
    prompts_per_gpu: float = 1
    # Image-to-video: every prompt carries a conditioning image.
    needs_image: bool = False
    # Files other than network configs that differ at full size (an image processor's
    # 224-pixel preprocessing, say): {path in the diffusers layout: shipped file}, copied over
    # the tiny builder's at full size only.
    full_files: Mapping[str, Path] = field(default_factory=dict)
    # The plain diffusers pipeline over a loaded policy's modules (same network, scheduler of
    # the same schedule), and the keyword arguments of its __call__ for ``batch`` prompts at the
    # policy's setting; None when the model has no diffusers pipeline to compare with.
    pipeline: Callable[[Any], Any] | None = None
    pipeline_call: Callable[[Any, Any, list[Any]], dict[str, Any]] | None = None
    # A priori seconds of this policy's suite run on one H200 at full size (building included),
    # used to plan a run within --budget-s before anything is built.
    cost_estimate_s: float = 120.0

    def full_configs(self) -> dict[str, dict[str, Any]]:
        """``{folder: config}`` of every network, read from the shipped files."""
        unsourced = set(self.configs) - set(self.config_sources)
        if unsourced:
            raise ValueError(
                f"policy '{self.policy}': config of {sorted(unsourced)[0]} has no source"
            )
        return {folder: json.loads(Path(f).read_text()) for folder, f in self.configs.items()}


def benchmark_specs(registry: Any) -> dict[str, BenchmarkSpec]:
    """Every :class:`BenchmarkSpec` the loaded plugins register, by policy name. Two specs for
    one policy are an error naming both plugins; a spec for an unregistered policy is an error."""
    specs: dict[str, BenchmarkSpec] = {}
    owners: dict[str, str] = {}
    hook = registry.manager.hook.register_benchmark_specs
    for impl in hook.get_hookimpls():

        def register(spec: BenchmarkSpec, _plugin: str = impl.plugin_name) -> None:
            if not isinstance(spec, BenchmarkSpec):
                raise TypeError(f"plugin '{_plugin}' registered {spec!r}, not a BenchmarkSpec")
            if spec.policy in specs:
                raise UsageError(
                    f"benchmark spec of policy '{spec.policy}' is registered by both plugin "
                    f"'{owners[spec.policy]}' and plugin '{_plugin}'"
                )
            registry.get("policy", spec.policy)  # an unknown policy is a UsageError
            specs[spec.policy] = spec
            owners[spec.policy] = _plugin

        impl.function(register=register)
    return specs
