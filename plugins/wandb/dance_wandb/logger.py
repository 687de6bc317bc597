"""The ``wandb`` logger: every iteration's metrics to a Weights & Biases run.

One W&B run per dance run, named after the run folder, with the resolved recipe as its config
and the iteration as its step. Its id is kept in the run folder (:data:`RUN_ID_FILE`), so
``dance run --resume`` continues the same W&B run. ``mode = "offline"`` (or ``WANDB_MODE=offline``)
writes the run's files only; ``wandb sync`` uploads them later.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dance.config import option
from dance.interfaces import Logger, RunInfo

RUN_ID_FILE = "wandb-run-id"  # in the run folder: the W&B run id, for resuming


@dataclass
class WandbConfig:
    project: str = option("dance", "W&B project the run is logged to")
    entity: str = option("", "W&B team or user that owns the project; empty = your default")
    name: str = option("", "display name of the W&B run; empty = the run folder's name")
    group: str = option("", "W&B group, to show related runs together; empty = none")
    tags: list[str] = option([], "tags of the W&B run")
    mode: str = option(
        "",
        "online; offline = write the run's files only (upload them later with `wandb sync`); "
        "disabled = log nothing; empty = WANDB_MODE if set, else online",
        choices=("", "online", "offline", "disabled"),
    )
    dir: str = option(
        "",
        "folder wandb writes its files under (in wandb/); empty = WANDB_DIR, else the run folder",
    )
    on_resume: str = option(
        "allow",
        "what `dance run --resume` does with the W&B run: allow = continue it (same id; W&B "
        "keeps the values first logged for the iterations after the checkpoint, which run "
        "again); rewind = cut its history back to the checkpoint first (wandb's resume_from, "
        "a W&B preview feature your server must have)",
        choices=("allow", "rewind"),
    )


class WandbLogger(Logger):
    name = "wandb"
    config_class = WandbConfig
    wandb_run: Any = None

    def start(self, run: RunInfo) -> None:
        super().start(run)
        import wandb

        cfg = self.config
        id_file = run.output_dir / RUN_ID_FILE
        previous = id_file.read_text().strip() if run.start and id_file.is_file() else ""
        where = Path(cfg.dir or os.environ.get("WANDB_DIR") or run.output_dir)
        where.mkdir(parents=True, exist_ok=True)
        resume: dict[str, Any] = {}
        if previous and cfg.on_resume == "rewind":
            # W&B continues after step N of resume_from: keep iterations 0 .. start - 1.
            resume = {"resume_from": f"{previous}?_step={run.start - 1}"}
        elif previous:
            resume = {"id": previous, "resume": "allow"}
        self.wandb_run = wandb.init(
            project=cfg.project,
            entity=cfg.entity or None,
            name=cfg.name or run.output_dir.name,
            group=cfg.group or None,
            tags=cfg.tags or None,
            mode=cfg.mode or None,
            dir=str(where),
            config=run.config,
            # The progress bar redraws many times a second: not a log worth keeping twice.
            settings=wandb.Settings(console="off"),
            **resume,
        )
        id_file.write_text(self.wandb_run.id + "\n")

    def log(self, iteration: int, metrics: Mapping[str, float]) -> None:
        self.wandb_run.log(dict(metrics), step=iteration)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
