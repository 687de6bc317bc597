"""Trained weights named on the command line (``dance sample --lora PATH``): a run folder (its
latest checkpoint; ``runs`` or ``runs/latest`` lead to the newest run), a checkpoint folder, its
trained/ folder or the weights file itself."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from dance.errors import UsageError
from dance.reporting.run_folders import latest_run, resolve_run_dir
from dance.training.checkpoint import WEIGHTS_DIR, latest_checkpoint

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_TRAINED_FORMS = (
    "expected a run folder (with checkpoints/), a checkpoint folder (checkpoints/iter-N), its "
    "trained/ folder, or the .safetensors file in it"
)


def _weights_folder_of(given: Path, file: Path) -> Path:
    """The folder a policy loads to get the weights in ``file``: policies read a folder."""
    kind = file.suffix or "plain"
    if kind != ".safetensors":
        raise UsageError(f"--lora {given} is a {kind} file; {_TRAINED_FORMS}.")
    folder = file.parent
    if folder.parent.name == WEIGHTS_DIR:  # a full fine-tune's trained/<network>/ file
        return folder.parent
    others = sorted(p.name for p in folder.glob("*.safetensors") if p.name != file.name)
    if others:  # the policy would read the folder, possibly another file than the one named
        raise UsageError(
            f"--lora {given}: its folder also holds {', '.join(others)}; move the file to a "
            "folder of its own, or pass the folder."
        )
    return folder


def resolve_trained(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """Find trained weights from a run folder (its latest checkpoint; ``runs`` or ``runs/latest``
    lead to the newest run), a checkpoint folder, its trained/ folder or the weights file itself.

    Returns the weights folder and, when ``path`` belongs to a run, that run's resolved config.
    """
    given = Path(path)
    path = resolve_run_dir(given)
    if not path.exists():
        raise UsageError(f"--lora {given} does not exist; {_TRAINED_FORMS}.")
    if path.is_file():
        path = _weights_folder_of(given, path)
    if not (path / "checkpoints").is_dir() and latest_run(path) is not None:
        path = latest_run(path)  # a folder of runs, such as runs/: its newest run
    run_dir = None
    if (path / "checkpoints").is_dir():
        run_dir, checkpoint = path, latest_checkpoint(path)
        if checkpoint is None:
            raise UsageError(
                f"--lora {given} is a run folder without a finished checkpoint "
                f"({path / 'checkpoints' / 'latest'} is missing); pass a checkpoint folder."
            )
        path = checkpoint
    if (path / WEIGHTS_DIR).is_dir():
        path = path / WEIGHTS_DIR
    if run_dir is None and path.name == WEIGHTS_DIR and path.parent.parent.name == "checkpoints":
        run_dir = path.parent.parent.parent
    if not any(path.glob("*.safetensors")) and not any(path.glob("*/*.safetensors")):
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
        listing = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "") or "nothing"
        raise UsageError(
            f"--lora {given}: {path} holds {listing} and no .safetensors weights; {_TRAINED_FORMS}."
        )
    config = None
    if run_dir is not None and (run_dir / "config.toml").is_file():
        config = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    return path, config
