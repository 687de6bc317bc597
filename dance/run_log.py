"""What a run writes besides checkpoints: metrics.jsonl, TensorBoard events, grids, progress."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from dance.tensorboard import EventWriter


def media_to_grid(media: torch.Tensor, columns: int = 4) -> torch.Tensor:
    """Tile pixels ``[B, C, H, W]`` (videos ``[B, C, F, H, W]``: their first frame) into one
    ``[H', W', C]`` uint8 image."""
    if media.ndim == 5:
        media = media[:, :, 0]
    b, c, h, w = media.shape
    columns = max(1, min(columns, b))
    rows = math.ceil(b / columns)
    grid = torch.zeros(c, rows * h, columns * w, dtype=media.dtype)
    for i in range(b):
        r, col = divmod(i, columns)
        grid[:, r * h : (r + 1) * h, col * w : (col + 1) * w] = media[i].cpu()
    return (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)


def save_grid(media: torch.Tensor, path: Path, columns: int = 4) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    array = media_to_grid(media.float(), columns).numpy()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(path)


class RunLog:
    """Per-iteration metrics to metrics.jsonl and TensorBoard, and a rich progress bar."""

    def __init__(self, output_dir: Path, iterations: int, enabled: bool, progress: bool) -> None:
        self.output_dir = output_dir
        self.enabled = enabled
        self.events = EventWriter(str(output_dir / "tensorboard")) if enabled else None
        self.metrics_path = output_dir / "metrics.jsonl"
        self.progress = None
        if enabled and progress:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]GRPO"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self.task = self.progress.add_task("grpo", total=iterations, status="")
            self.progress.start()

    def start_at(self, iteration: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=iteration)

    def log(self, iteration: int, metrics: dict[str, Any], headline: str) -> None:
        if not self.enabled:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({"iteration": iteration, **metrics}) + "\n")
        assert self.events is not None
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.events.add_scalar(key, float(value), iteration)
        self.events.flush()
        if self.progress is not None:
            self.progress.update(self.task, completed=iteration + 1, status=headline)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.events is not None:
            self.events.close()
            self.events = None
