"""The run report: evaluation files under ``eval/``, ``summary.json`` and the plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dance.reporting.paired import paired_change
from dance.reporting.plots import before_after_grid, line_chart


def save_evaluation(
    output_dir: Path, stage: str, result: dict[str, Any], media: torch.Tensor
) -> None:
    """``eval/<stage>.json`` (the figures) and ``eval/<stage>.pt`` (the images as uint8)."""
    folder = output_dir / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stage}.json").write_text(json.dumps(result, indent=2) + "\n")
    pixels = (media.clamp(0, 1) * 255).round().to(torch.uint8)
    torch.save(pixels, folder / f"{stage}.pt")


def write_report(out: Path, iterations: int) -> dict[str, Any]:
    """summary.json, reward_curve.png and, after an evaluation, eval_grid.png."""
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curves = (
        {
            key[len("reward/") : -len("/mean")]: [(h["iteration"], h[key]) for h in history]
            for key in history[-1]
            if key.startswith("reward/") and key.endswith("/mean")
        }
        if history
        else {}
    )
    files = {"metrics": "metrics.jsonl", "config": "config.toml"}
    if curves:
        line_chart(curves, out / "reward_curve.png", "mean reward per iteration")
        files["reward_curve"] = "reward_curve.png"
    report: dict[str, Any] = {"iterations": iterations, "files": files}
    folder = out / "eval"
    if (folder / "before.json").is_file() and (folder / "after.json").is_file():
        before_figures = json.loads((folder / "before.json").read_text())
        after_figures = json.loads((folder / "after.json").read_text())
        before_images = before_figures.pop("per_image", None)
        after_images = after_figures.pop("per_image", None)
        prompts, _ = before_figures.pop("prompts", None), after_figures.pop("prompts", None)
        report["eval_before"], report["eval_after"] = before_figures, after_figures
        if before_images and after_images:
            # Same prompts and seeds in both stages: compare image by image.
            report["eval_change"] = {
                key: paired_change(before_images[key], after_images[key])
                for key in before_images
                if key in after_images
            }
        before = torch.load(folder / "before.pt", weights_only=True).float() / 255
        after = torch.load(folder / "after.pt", weights_only=True).float() / 255
        before_after_grid(before, after, out / "eval_grid.png", prompts=prompts)
        files["eval_grid"] = "eval_grid.png"
    files["summary"] = "summary.json"
    (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
