"""What a run shows and writes besides checkpoints: progress, its loggers (metrics.jsonl,
TensorBoard events, ... see :mod:`dance.reporting.loggers`), sample grids."""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from dance.errors import RunError
from dance.interfaces import Logger, RunInfo
from dance.video.frames import frame_indices
from dance.video.mp4 import DEFAULT_FPS, write_mp4


def media_to_grid(media: torch.Tensor, columns: int = 4) -> torch.Tensor:
    """Tile pixels ``[B, C, H, W]`` into one ``[H', W', C]`` uint8 image, ``columns`` wide.

    Videos ``[B, C, F, H, W]`` are shown by their middle frame ``F // 2``: the first frame of an
    image-to-video sample is close to its conditioning image and says little about the result.
    """
    if media.ndim == 5:
        media = media[:, :, media.shape[2] // 2]
    b, c, h, w = media.shape
    columns = max(1, min(columns, b))
    rows = math.ceil(b / columns)
    grid = torch.zeros(c, rows * h, columns * w, dtype=media.dtype)
    for i in range(b):
        r, col = divmod(i, columns)
        grid[:, r * h : (r + 1) * h, col * w : (col + 1) * w] = media[i].cpu()
    return (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)


def frame_strips(videos: torch.Tensor, frames: int) -> torch.Tensor:
    """Each video ``[B, C, F, H, W]`` as ``frames`` uniformly spaced frames side by side (the
    first and last included, as in :func:`dance.video.frames.frame_indices`):
    ``[B, C, H, frames' * W]``
    with ``frames' = min(frames, F)``."""
    index = frame_indices(videos.shape[2], frames, videos.device)
    chosen = videos.index_select(2, index)  # [B, C, F', H, W]
    b, c, n, h, w = chosen.shape
    return chosen.permute(0, 1, 3, 2, 4).reshape(b, c, h, n * w)


def video_grid(videos: torch.Tensor, columns: int = 4) -> torch.Tensor:
    """Tile videos ``[B, C, F, H, W]`` into one video ``[C, F, H', W']`` uint8, ``columns`` wide."""
    per_frame = [media_to_grid(videos[:, :, f].float(), columns) for f in range(videos.shape[2])]
    return torch.stack(per_frame).permute(3, 0, 1, 2)  # [F, H', W', C] -> [C, F, H', W']


def save_grid(
    media: torch.Tensor,
    path: Path,
    columns: int = 4,
    video_frames: int = 4,
    fps: float = DEFAULT_FPS,
) -> list[Path]:
    """Write a batch of samples as one picture at ``path`` (a PNG); returns the files written.

    Images ``[B, C, H, W]``: a grid ``columns`` wide. Videos ``[B, C, F, H, W]``: the PNG shows
    each video as a strip of ``video_frames`` uniformly spaced frames, one video per row, and an
    MP4 beside it (same name, ``.mp4``) plays all videos tiled ``columns`` wide.
    """
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    written = [path]
    if media.ndim == 5:
        still = media_to_grid(frame_strips(media.float(), video_frames), columns=1)
        written.append(write_mp4(video_grid(media, columns), path.with_suffix(".mp4"), fps=fps))
    else:
        still = media_to_grid(media.float(), columns)
    array = still.numpy()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(path)
    return written


def cut_metrics(path: Path, iteration: int) -> int:
    """Keep the lines of metrics.jsonl for iterations before ``iteration``; returns how many
    were dropped. A line a killed process left half-written is dropped too. The file is replaced
    atomically."""
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn last line of a killed write
        if isinstance(record, dict) and record.get("iteration", iteration) < iteration:
            kept.append(line)
    if len(kept) == len(lines):
        return 0
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)
    return len(lines) - len(kept)


PLAIN_EVERY_S = 3.0  # without a terminal: at most one line per this many seconds, and the last


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or already closed
        return False


class RunLog:
    """Per-iteration metrics to the run's loggers (``trainer.loggers``; rank 0 holds them, the
    other ranks none), and progress for the user.

    A logger that raises stops the run: :class:`dance.errors.RunError`, one line naming it.

    With ``progress``: on a terminal, a progress bar with the headline (each reward's mean and
    the seconds per iteration) on its own row above it, so a narrow terminal wraps it instead of
    cutting it; otherwise (CI, nohup, a SLURM log) one plain, flushed line per iteration, or one
    every :data:`PLAIN_EVERY_S` seconds when iterations are faster, always including the last.
    """

    def __init__(
        self,
        output_dir: Path,
        iterations: int,
        enabled: bool,
        progress: bool,
        stream: TextIO | None = None,
        plain_every_s: float = PLAIN_EVERY_S,
        loggers: Sequence[Logger] = (),
        config: dict[str, Any] | None = None,
    ) -> None:
        self.output_dir = output_dir
        self.enabled = enabled
        self.iterations = iterations
        self.loggers = list(loggers)
        self.config = config or {}
        self._started_loggers: list[Logger] = []
        self.stream = stream if stream is not None else sys.stdout
        self.plain = enabled and progress and not is_terminal(self.stream)
        self.plain_every_s = plain_every_s
        self._started = time.monotonic()
        self._last_line_at: float | None = None
        self._unprinted: str | None = None  # the newest plain line, if it was held back
        self.progress = None
        if enabled and progress and not self.plain:
            self.progress = _HeadlineProgress.create(iterations, self.stream)
            self.task = self.progress.task_ids[0]
            self.progress.start()

    def start_at(self, iteration: int) -> None:
        """The run continues at ``iteration`` (0, or the resumed checkpoint's): start every
        logger, which drops what earlier attempts logged for ``iteration`` and later (they are
        about to run again), so that each holds every iteration once."""
        run = RunInfo(self.output_dir, self.iterations, iteration, self.config)
        for logger in self.loggers:
            self._started_loggers.append(logger)  # closed even if it fails half-way through
            _call(logger, "start", run)
        if self.progress is not None:
            self.progress.update(self.task, completed=iteration)
        self._started = time.monotonic()
        if self.plain:
            todo = self.iterations - iteration
            resumed = f", resuming after iteration {iteration}" if iteration else ""
            objective = self.config.get("objective", {}).get("name", "grpo")
            self._print(f"{objective}: {todo} of {self.iterations} iterations to run{resumed}")

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def log(self, iteration: int, metrics: dict[str, Any], headline: str) -> None:
        for logger in self.loggers:
            _call(logger, "log", iteration, metrics)
        if self.progress is not None:
            self.progress.headline = headline
            self.progress.update(self.task, completed=iteration + 1)
        if self.plain:
            self._plain_line(iteration, headline)

    def _plain_line(self, iteration: int, headline: str) -> None:
        now = time.monotonic()
        elapsed = datetime.timedelta(seconds=round(now - self._started))
        line = f"iteration {iteration + 1}/{self.iterations}  {headline}  elapsed {elapsed}"
        due = self._last_line_at is None or now - self._last_line_at >= self.plain_every_s
        if due or iteration + 1 >= self.iterations:
            self._print(line)
            self._last_line_at, self._unprinted = now, None
        else:
            self._unprinted = line

    def close(self, failed: bool = False) -> None:
        """Print the last line, stop the bar and close every started logger, once. After a
        failure (``failed``), a logger that fails to close is only reported, on stderr: the
        error that stopped the run is the one to raise."""
        loggers, self._started_loggers = self._started_loggers, []
        self._close_progress()
        errors = []
        for logger in loggers:  # each closes, whichever failed before it
            try:
                _call(logger, "close")
            except RunError as exc:
                errors.append(exc)
        # Raised: the first, unless an earlier error stopped the run; the others are notes.
        raised = errors[0] if errors and not failed else None
        for exc in errors:
            if exc is not raised:
                print(f"note: {exc}", file=sys.stderr)
        if raised is not None:
            raise raised

    def _close_progress(self) -> None:
        if self._unprinted is not None:  # stopped early: the last iteration still gets its line
            self._print(self._unprinted)
            self._unprinted = None
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _call(logger: Logger, method: str, *args: Any) -> None:
    """``logger.method(*args)``; an exception becomes one line naming the logger."""
    try:
        getattr(logger, method)(*args)
    except Exception as exc:
        raise RunError(
            f"logger '{logger.name}' failed in {method}(): {type(exc).__name__}: {exc}"
        ) from exc


class _HeadlineProgress(Progress):
    """A rich progress bar with the headline on its own row above the bar, wrapped rather than
    cut to "…" when the terminal is narrow."""

    headline = ""

    @classmethod
    def create(cls, iterations: int, stream: TextIO) -> _HeadlineProgress:
        progress = cls(
            TextColumn("[bold]GRPO"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
        )
        progress.add_task("grpo", total=iterations)
        return progress

    def get_renderables(self) -> Iterable[RenderableType]:
        if self.headline:
            yield Text(self.headline, overflow="fold")
        yield self.make_tasks_table(self.tasks)
