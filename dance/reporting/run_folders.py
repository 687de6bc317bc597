"""Run folders: each `dance run` gets its own folder under ``runs/``, and ``runs/latest`` names the
newest.

``runs/latest`` is a symbolic link to the run folder (relative, so the tree can be moved), replaced
atomically by renaming a new link over it. Where symbolic links cannot be made (some Windows
setups, some network file systems) it is instead a small text file holding the folder's name; every
reader goes through :func:`resolve_run_dir`, which understands both.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import sys
from pathlib import Path

from dance.errors import UsageError

RUNS_ROOT = Path("runs")
LATEST = "latest"


def run_label(recipe: str | None, policy: str | None) -> str:
    """The recipe part of a run folder's name: the recipe's name (a file: its stem), else the
    policy's name; only characters safe in a file name."""
    label = Path(recipe).stem if recipe else policy or "run"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.") or "run"


def new_run_dir(root: Path, label: str, now: datetime.datetime | None = None) -> Path:
    """Create and return ``root/<date>_<time>_<label>``, e.g. ``runs/2026-12-01_23-40-12_demo``.

    Two runs started in the same second get ``..._demo-2``, ``..._demo-3``: the folder is
    created with ``mkdir`` (which fails if it exists), so two processes never share one.
    """
    stamp = (now or datetime.datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
    root.mkdir(parents=True, exist_ok=True)
    base, n = f"{stamp}_{label}", 1
    while True:
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def read_pointer(pointer: Path) -> Path | None:
    """Where a ``latest`` pointer leads: the target of a link, or the folder a pointer file names
    (relative to the pointer's folder); None if ``pointer`` is neither."""
    if pointer.is_symlink():
        return pointer.parent / os.readlink(pointer)
    if pointer.is_file():
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        if name and "\n" not in name and len(name) < 512:
            return pointer.parent / name
    return None


def resolve_run_dir(path: Path) -> Path:
    """``path`` itself, unless it is a ``latest`` pointer file (the fallback for symlinks):
    then the run folder it names. A symlink needs nothing, the file system follows it."""
    path = Path(path)
    if path.is_file() and not path.is_symlink() and path.name == LATEST:
        target = read_pointer(path)
        if target is not None and target.is_dir():
            return target
    return path


def point_latest(root: Path, run_dir: Path) -> Path:
    """Make ``root/latest`` lead to ``run_dir`` (a folder inside ``root``), atomically.

    A ``latest`` that is a real folder (written by older versions of dance, which ran in
    ``runs/latest`` itself) is first renamed to a dated folder so that nothing is lost; returns
    where it went, or ``run_dir`` when nothing was moved.
    """
    latest = root / LATEST
    moved = run_dir
    if latest.is_dir() and not latest.is_symlink():
        stamp = datetime.datetime.fromtimestamp(latest.stat().st_mtime)
        moved = new_run_dir(root, "previous-latest", stamp)
        moved.rmdir()
        os.replace(latest, moved)
    tmp = root / f".{LATEST}.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(run_dir.name, tmp, target_is_directory=True)
    except (OSError, NotImplementedError):  # no symlinks here: a pointer file instead
        tmp.write_text(run_dir.name + "\n", encoding="utf-8")
    os.replace(tmp, latest)
    return moved


def latest_run(root: Path) -> Path | None:
    """The run folder ``root/latest`` leads to, if it exists."""
    latest = root / LATEST
    if latest.is_dir() and not latest.is_symlink():
        return latest  # a run folder of older versions of dance
    target = read_pointer(latest)
    return target if target is not None and target.is_dir() else None


def remove_if_unused(run_dir: Path, root: Path, previous: Path | None) -> None:
    """After a run failed before writing anything worth keeping (no checkpoint, metrics or
    evaluation), remove its folder and point ``latest`` back at ``previous``."""
    if any((run_dir / name).exists() for name in ("checkpoints", "metrics.jsonl", "eval")):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    if latest_run(root) is None:
        if previous is not None:
            point_latest(root, previous)
        else:
            (root / LATEST).unlink(missing_ok=True)


def choose_run_dir(
    recipe: str | None, policy: str | None, root: Path = RUNS_ROOT
) -> tuple[Path, Path | None]:
    """A new run folder for this run, with ``latest`` pointing at it; also the run ``latest`` led
    to before (on rank 0; None elsewhere). Under torchrun rank 0 creates the folder and broadcasts
    its name, so every rank writes to the same folder."""
    import torch.distributed as torch_dist

    import dance.distributed as dist

    name: list[str | None] = [None]
    previous = None
    if dist.is_main():
        previous = latest_run(root)
        try:
            run_dir = new_run_dir(root, run_label(recipe, policy))
            moved = point_latest(root, run_dir)
        except OSError as exc:  # read-only, a file in the way, disk full
            raise UsageError(
                f"cannot make a run folder in {root}: {exc.strerror or exc}; run from a writable "
                "folder or pass --output-dir."
            ) from None
        if moved != run_dir:
            previous = moved
            print(f"note: the run that was in {root / LATEST} is now in {moved}", file=sys.stderr)
        name = [run_dir.name]
    if dist.is_distributed():
        torch_dist.broadcast_object_list(name, src=0)
    return root / str(name[0]), previous
