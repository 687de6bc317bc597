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


# The held-out figures the curve keeps (when the evaluation reports them).
CURVE_FIGURES = ("reward_mean", "success_rate")


def evaluation_curve(folder: Path, iterations: int) -> list[dict[str, Any]]:
    """The held-out figures of every evaluation under ``folder`` (``eval/``), one point per
    iteration in order: ``before``, every ``iter-NNNNNN`` and ``after``. Where two files score
    the same weights (a run stopped and evaluated "after" at a periodic iteration), the later
    stage is kept. Files of versions that did not record the iteration: before = 0, after =
    ``iterations``."""
    stages = [("before", 0)]
    stages += [(p.stem, int(p.stem[len("iter-") :])) for p in sorted(folder.glob("iter-*.json"))]
    stages.append(("after", iterations))
    points: dict[int, dict[str, Any]] = {}
    for stage, default_iteration in stages:
        path = folder / f"{stage}.json"
        if not path.is_file():
            continue
        figures = json.loads(path.read_text())
        iteration = int(figures.get("iteration", default_iteration))
        point: dict[str, Any] = {"iteration": iteration, "stage": stage}
        point.update({k: figures[k] for k in CURVE_FIGURES if k in figures})
        points[iteration] = point
    return [points[i] for i in sorted(points)]


def write_report(out: Path, iterations: int) -> dict[str, Any]:
    """summary.json, reward_curve.png and, after an evaluation, eval_grid.png; with periodic
    evaluations (``evaluation.every``) the held-out curve and eval_curve.png."""
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
    curve = evaluation_curve(folder, iterations)
    if any(p["stage"].startswith("iter-") for p in curve):  # evaluation.every was set
        report["eval_curve"] = curve
        series = {
            f"held-out {key}": [(p["iteration"], p[key]) for p in curve if key in p]
            for key in CURVE_FIGURES
        }
        line_chart(series, out / "eval_curve.png", "held-out evaluation per iteration")
        files["eval_curve"] = "eval_curve.png"
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
