"""Writing tiny checkpoints, and the command line of their builders
(``python -m dance_flux.tiny OUT_DIR``...)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def save_pipeline(pipeline: Any, path: str | Path) -> Path:
    """Write a pipeline of tiny parts as its ``save_pretrained`` does for the real model
    (safetensors); returns the directory."""
    path = Path(path)
    pipeline.save_pretrained(path, safe_serialization=True)
    return path


def tiny_checkpoint_main(
    label: Callable[[dict[str, Any]], str] | str,
    build: Callable[..., Path],
    argv: list[str] | None = None,
    **flags: dict[str, Any],
) -> None:
    """Parse ``OUT_DIR [--seed N]`` plus ``flags`` (``{"--num-layers": {"type": int,
    "default": 1}}``: each becomes the keyword of ``build`` it names), build the checkpoint and
    say where it went and how long it took. ``label`` names the model, or computes its name from
    the parsed options."""
    name = label if isinstance(label, str) else "model"
    parser = argparse.ArgumentParser(description=f"Write a tiny random {name} checkpoint.")
    parser.add_argument("out_dir", help="directory to write (diffusers layout)")
    parser.add_argument("--seed", type=int, default=0)
    for flag, spec in flags.items():
        parser.add_argument(flag, **spec)
    options = vars(parser.parse_args(argv))
    out_dir = options.pop("out_dir")
    start = time.perf_counter()
    path = build(out_dir, **options)
    name = label if isinstance(label, str) else label(options)
    print(f"wrote a tiny {name} checkpoint to {path} in {time.perf_counter() - start:.2f} s")
