"""Atomic checkpoints of a run: trained weights, optimizer, schedulers, RNG states, data position.

A checkpoint is written into a temporary folder and renamed into place, then ``latest`` is replaced
atomically, so an interrupted write never leaves a half checkpoint behind as the one to resume.
State is loaded with ``torch.load(weights_only=True)``: no pickled code runs on resume.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from dance.errors import UsageError
from dance.interfaces import Policy

STATE_FILE = "trainer_state.pt"
WEIGHTS_DIR = "trained"


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_checkpoint(
    run_dir: Path, iteration: int, policy: Policy, state: dict[str, Any], keep: int
) -> Path:
    """Write checkpoint ``iter-NNNNNN`` (iterations completed) and point ``latest`` at it."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"iter-{iteration:06d}"
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    policy.save_trained(str(tmp / WEIGHTS_DIR))
    torch.save(state, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(root / "latest", name)
    for old in sorted(p for p in root.glob("iter-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = checkpoint_root(run_dir) / "latest"
    if not pointer.is_file():
        return None
    path = checkpoint_root(run_dir) / pointer.read_text().strip()
    if not (path / STATE_FILE).is_file():
        raise UsageError(f"checkpoint {path} named by {pointer} is incomplete; remove {pointer}.")
    return path


def load_checkpoint(path: Path, policy: Policy) -> dict[str, Any]:
    """Load trained weights into ``policy`` and return the trainer state."""
    policy.load_trained(str(path / WEIGHTS_DIR))
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
