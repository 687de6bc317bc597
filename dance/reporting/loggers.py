"""The built-in loggers, registered through the entry point ``loggers`` exactly as a third-party
plugin registers its own (see :mod:`dance.hookspecs` and :class:`dance.interfaces.Logger`).

- ``jsonl``: ``metrics.jsonl``, one JSON object per iteration. The run's own record: the run
  report (summary.json, reward_curve.png) reads it, so ``trainer.loggers`` must list it.
- ``tensorboard``: scalar events under ``tensorboard/`` (:mod:`dance.reporting.tensorboard`, no
  TensorBoard dependency).

Both cut what an earlier attempt logged for the iterations a resumed run repeats, so every
iteration appears once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from dance.hookspecs import hookimpl
from dance.interfaces import Logger, RunInfo
from dance.reporting.run_log import cut_metrics
from dance.reporting.tensorboard import EventWriter, truncate_events


@dataclass
class NoOptions:
    """A logger without options."""


class JsonlLogger(Logger):
    """``metrics.jsonl`` in the run folder: ``{"iteration": i, **metrics}`` per line, appended
    and flushed per iteration, so a killed run keeps every finished iteration."""

    name = "jsonl"
    config_class = NoOptions

    def start(self, run: RunInfo) -> None:
        super().start(run)
        self.path = run.output_dir / "metrics.jsonl"
        cut_metrics(self.path, run.start)

    def log(self, iteration: int, metrics: Mapping[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"iteration": iteration, **metrics}) + "\n")


class TensorBoardLogger(Logger):
    """TensorBoard scalar events in ``tensorboard/`` of the run folder, one tag per metric."""

    name = "tensorboard"
    config_class = NoOptions
    events: EventWriter | None = None

    def start(self, run: RunInfo) -> None:
        super().start(run)
        logdir = run.output_dir / "tensorboard"
        self.events = EventWriter(logdir)
        # Earlier attempts' files lose the steps about to run again; this attempt's file stays.
        truncate_events(logdir, run.start, keep=self.events.path)

    def log(self, iteration: int, metrics: Mapping[str, float]) -> None:
        assert self.events is not None, "start() first"
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.events.add_scalar(key, float(value), iteration)
        self.events.flush()

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None


@hookimpl
def register_loggers(register):  # noqa: ANN001 - the hook's callback
    register(JsonlLogger)
    register(TensorBoardLogger)
