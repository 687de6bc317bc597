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

Besides registering components, a plugin may implement the lifecycle hooks at the end of this
module (``after_iteration``, ``after_evaluation``, ``after_checkpoint``) to act on a run as it
goes: copy a checkpoint elsewhere, post figures, tell a sweep controller. They run on rank 0 only
(the one process of a plain run; under torchrun, the first), because their effects (files,
messages, uploads) must happen once per job; the other ranks wait for them. An implementation
declares the arguments it needs, any subset of the spec's. A lifecycle hook that raises stops the
whole run, every rank, with one line naming the plugin and its error (exit code 1), rather than
training on while a side effect the user asked for silently failed. A plugin that failed to load
takes no part. Implementations are plain calls: a hook wrapper is refused when the hook is
called. A plugin implementing a hook this module does not declare (a misspelt name) fails to load.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

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
def register_loggers(register: Callable[[type], None]) -> None:
    """Register :class:`dance.interfaces.Logger` subclasses: where a run's metrics go, chosen by
    name in ``trainer.loggers``. Built in: ``jsonl`` (metrics.jsonl) and ``tensorboard``."""


@hookspec
def register_benchmark_specs(register: Callable[[object], None]) -> None:
    """Register :class:`dance.models.bench_spec.BenchmarkSpec` objects (one per policy): what the
    GPU suite (benchmarks/gpu_suite.py) needs to measure a policy at its published setting on
    full-size random-weight networks. Optional; a policy without one is left out of the suite."""


# -- lifecycle hooks: called during a run, on rank 0 only (see the module docstring) -------------


@hookspec
def after_iteration(iteration: int, metrics: Mapping[str, float], output_dir: Path) -> None:
    """After iteration ``iteration`` (0-based) trained and its metrics were logged (its line is
    in ``output_dir/metrics.jsonl``). ``metrics`` are the whole job's, gathered over every rank:
    the same keys and values as that line. Called before the iteration's checkpoint, if any."""


@hookspec
def after_evaluation(stage: str, figures: Mapping[str, Any], output_dir: Path) -> None:
    """After the held-out evaluation ``stage`` ("before" the first iteration, "after" the last)
    was scored and written to ``output_dir/eval/<stage>.json``; ``figures`` is that file's
    content (reward_mean, success_rate, per_image, ...). Only runs with an ``[evaluation]``."""


@hookspec
def after_checkpoint(path: Path, iteration: int) -> None:
    """After the checkpoint ``path`` (``.../checkpoints/iter-NNNNNN``) was written completely by
    every rank and ``checkpoints/latest`` points at it; ``iteration`` is the number of
    iterations it holds (a resumed run continues with iteration ``iteration``)."""
