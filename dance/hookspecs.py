"""The hooks a dance plugin implements.

A plugin is a module named by an entry point in the group ``dance``::

    [project.entry-points.dance]
    my_reward = "my_package.plugin"

and implements any of the hooks below with ``@dance.hookimpl``. Each hook receives a ``register``
callback; call it once per component class::

    import dance

    @dance.hookimpl
    def register_rewards(register):
        register(MyReward)

The class must subclass the matching interface in :mod:`dance.interfaces` and define ``name`` and
``config_class``. Built-in plugins load through the same entry points as third-party ones.
Two plugins registering the same name under the same kind is an error naming both.
Set ``DANCE_PLUGINS`` to a comma-separated list of entry-point names to load only those plugins
(an empty value loads none).
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("dance")
hookimpl = pluggy.HookimplMarker("dance")


@hookspec
def register_policies(register: Callable[[type], None]) -> None:
    """Register :class:`dance.interfaces.Policy` subclasses (foundation models)."""


@hookspec
def register_samplers(register: Callable[[type], None]) -> None:
    """Register :class:`dance.interfaces.Sampler` subclasses (stochastic steps with log-probs)."""


@hookspec
def register_rewards(register: Callable[[type], None]) -> None:
    """Register :class:`dance.interfaces.Reward` subclasses."""


@hookspec
def register_advantages(register: Callable[[type], None]) -> None:
    """Register :class:`dance.interfaces.Advantage` subclasses (advantage estimators)."""


@hookspec
def register_objectives(register: Callable[[type], None]) -> None:
    """Register :class:`dance.interfaces.Objective` subclasses (training objectives: what the
    rollout keeps and the loss of a micro-batch). Built in: ``grpo`` (the default), ``nft``."""


@hookspec
def register_benchmark_specs(register: Callable[[object], None]) -> None:
    """Register :class:`dance.models.bench_spec.BenchmarkSpec` objects (one per policy): what the
    GPU suite (benchmarks/gpu_suite.py) needs to measure a policy at its published setting on
    full-size random-weight networks. Optional; a policy without one is left out of the suite."""
