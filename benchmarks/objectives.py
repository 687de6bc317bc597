"""Objectives side by side on the demo, on the same CPU-time budget (issue 13, item 7).

    OMP_NUM_THREADS=1 python benchmarks/objectives.py                 # 4 settings x 3 seeds
    OMP_NUM_THREADS=1 python benchmarks/objectives.py --quick         # seconds: the CI check

Each setting of ``SETTINGS`` trains the bundled demo (``dance run``) once per seed in its own
process, with ``trainer.iterations`` set out of reach and the held-out set scored every
``--every`` iterations. The budget is the run's own training CPU: the sum of the trainer's
``cpu/iteration`` metric (process CPU seconds of each iteration, all its threads; not wall time,
which other jobs on a shared machine stretch; evaluations and model loading are not counted).
When that sum reaches ``--budget``, the script sends the run SIGINT, which stops it after the
iteration in progress and scores the held-out set one last time ("after"). So a run spends its
budget plus at most the iteration it was in: the table reports what each actually spent.

A setting whose plugin, recipe or option is not installed is skipped with a message. The results
go to ``docs/objectives.md`` under ``## Measured on the demo`` (that section alone is rewritten)
with ``docs/objectives_demo.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from dance.cli.recipe import apply_override, read_recipe, resolve
from dance.errors import UsageError
from dance.registry import get_registry
from dance.training.run_config import dumps_toml

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Measured on the demo"


@dataclass
class Setting:
    label: str
    recipe: str  # a bundled recipe
    overrides: list[str] = field(default_factory=list)  # key=value, as on the command line
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)  # whole tables replaced
    baseline: bool = False  # the run whose final success rate the others must reach


# The settings compared; adjust here. (b) is the baseline of the "time to reach" column.
SETTINGS = [
    Setting(
        "(a) grpo, dance-sde (every step noisy)",
        "demo",
        # DanceGRPO's SDE with FLUX's eta on all 12 steps; the demo's flow-sde window dropped.
        tables={"sampler": {"name": "dance-sde", "num_steps": 12, "shift": 3.0, "eta": 0.3}},
    ),
    Setting("(b) grpo, flow-sde window on steps 2-5 (the demo)", "demo", baseline=True),
    Setting(
        "(c) grpo, MixGRPO sliding window",
        "demo",
        # MixGRPO's published schedule (window of 4 from step 0, one step every 25 iterations,
        # restart at the end) with the demo's clip range and KL; see the sliding window section.
        [
            "sampler.sde_window_schedule=progressive",
            "sampler.sde_window_start=0",
            "sampler.sde_window_size=4",
            "sampler.sde_window_shift_interval=25",
            "sampler.sde_window_stride=1",
            "sampler.sde_window_at_end=restart",
        ],
    ),
    Setting("(d) nft, ode sampler", "demo-nft", ["objective.name=nft", "sampler.name=ode"]),
]

# Every run: no checkpoints or sample grids (they cost time and change nothing measured).
COMMON = ["trainer.checkpoint_every=0", "trainer.sample_every=0", "trainer.iterations=1000000"]
# --quick: a tiny demo (2 prompts x 4 samples, 6 steps, 1 held-out seed of 4 steps).
QUICK = [
    "trainer.prompts_per_iteration=2",
    "trainer.group_size=4",
    "evaluation.seeds=1",
    "evaluation.num_steps=4",
]


def build_recipe(setting: Setting, extra: list[str]) -> dict[str, Any]:
    """The setting's recipe as a TOML dict; raises DanceError when something is missing."""
    raw = read_recipe(setting.recipe)
    raw.update({k: dict(v) for k, v in setting.tables.items()})
    for assignment in [*setting.overrides, *extra]:
        apply_override(raw, assignment)
    return resolve(raw, get_registry()).to_toml_dict()


def cpu_so_far(metrics: Path) -> list[float]:
    """Cumulative training CPU seconds after each iteration logged in metrics.jsonl."""
    if not metrics.is_file():
        return []
    total, out = 0.0, []
    for line in metrics.read_text().splitlines():
        try:
            total += json.loads(line)["cpu/iteration"]
        except (json.JSONDecodeError, KeyError):  # a line being written
            break
        out.append(total)
    return out


def train(recipe: dict[str, Any], out: Path, budget: float) -> dict[str, Any]:
    """One run until its training CPU reaches ``budget``; its held-out curve against CPU.

    A run already finished in ``out`` with the same recipe and budget (an earlier invocation
    with the same ``--work``) is read back instead of trained again."""
    out.mkdir(parents=True, exist_ok=True)
    text = dumps_toml(recipe) + f"# budget {budget:g}\n"
    if not ((out / "recipe.toml").is_file() and (out / "recipe.toml").read_text() == text):
        shutil.rmtree(out / "run", ignore_errors=True)  # another setting: train again
    elif (out / "run" / "summary.json").is_file():
        return _result(out)
    shutil.rmtree(out / "run", ignore_errors=True)  # a run that did not finish starts again
    (out / "recipe.toml").write_text(text)
    command = [sys.executable, "-m", "dance.cli", "run", "--no-progress", "--recipe"]
    command += [str(out / "recipe.toml"), "--output-dir", str(out / "run")]
    log = (out / "log.txt").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    stopped = False
    while process.poll() is None:
        time.sleep(0.2)
        spent = cpu_so_far(out / "run" / "metrics.jsonl")
        if not stopped and spent and spent[-1] >= budget:
            process.send_signal(signal.SIGINT)  # stop after this iteration, evaluate "after"
            stopped = True
    log.close()
    if process.returncode not in (0, 130):  # 130: stopped by SIGINT, as asked
        raise RuntimeError(f"{out} failed: {(out / 'log.txt').read_text()[-2000:]}")
    return _result(out)


def _result(out: Path) -> dict[str, Any]:
    summary = json.loads((out / "run" / "summary.json").read_text())
    cpu = [0.0, *cpu_so_far(out / "run" / "metrics.jsonl")]  # cpu[i]: after i iterations
    curve = [{**p, "cpu_s": cpu[min(p["iteration"], len(cpu) - 1)]} for p in summary["eval_curve"]]
    return {"iterations": summary["iterations"], "cpu_s": cpu[-1], "curve": curve}


def on_grid(curve: list[dict[str, Any]], key: str, grid: list[float]) -> list[float]:
    """The figure ``key`` of a held-out curve, linearly interpolated at CPU times ``grid``."""
    xs, ys = [p["cpu_s"] for p in curve], [p[key] for p in curve]
    values = []
    for t in grid:
        j = next((i for i, x in enumerate(xs) if x >= t), len(xs) - 1)
        if j == 0 or xs[j] <= t:
            values.append(ys[j])
        else:
            w = (t - xs[j - 1]) / (xs[j] - xs[j - 1])
            values.append(ys[j - 1] + w * (ys[j] - ys[j - 1]))
    return values


def summarise(label: str, runs: list[dict[str, Any]], target: float | None) -> dict[str, Any]:
    finals = [r["curve"][-1] for r in runs]
    end = min(r["cpu_s"] for r in runs)
    grid = [end * i / 40 for i in range(41)]
    mean_success = [
        statistics.mean(v)
        for v in zip(*(on_grid(r["curve"], "success_rate", grid) for r in runs), strict=True)
    ]
    reached = None
    if target is not None:
        reached = next(
            (t for t, s in zip(grid, mean_success, strict=True) if s >= target - 1e-9), None
        )

    def spread(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {sd:.3f}"

    return {
        "label": label,
        "seeds": len(runs),
        "iterations": statistics.mean(r["iterations"] for r in runs),
        "cpu_s": statistics.mean(r["cpu_s"] for r in runs),
        "success": spread([f["success_rate"] for f in finals]),
        "reward": spread([f["reward_mean"] for f in finals]),
        "before_success": statistics.mean(r["curve"][0]["success_rate"] for r in runs),
        "reached_s": reached,
    }


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Two panels (held-out success rate, reward) against training CPU seconds: one colour per
    setting, thin lines per seed, a thick line for the mean over seeds."""
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
    w, h, margin = 640, 220, 56
    image = Image.new("RGB", (w + 2 * margin, 2 * (h + margin) + 40 + 18 * len(results)), "white")
    draw = ImageDraw.Draw(image)
    x_end = max((r["cpu_s"] for runs in results.values() for r in runs), default=1.0) or 1.0
    for row, key in enumerate(("success_rate", "reward_mean")):
        top = margin + row * (h + margin)
        values = [p[key] for runs in results.values() for r in runs for p in r["curve"]]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0

        def px(x: float, y: float, top=top, lo=lo, hi=hi) -> tuple[float, float]:
            return margin + x / x_end * w, top + h - (y - lo) / (hi - lo) * h

        draw.rectangle([margin, top, margin + w, top + h], outline=(120, 120, 120))
        draw.text((margin, top - 16), f"held-out {key} vs training CPU seconds", fill="black")
        for i in range(5):
            y = lo + (hi - lo) * i / 4
            draw.text((4, px(0, y)[1] - 6), f"{y:.2f}", fill="black")
            x = x_end * i / 4
            draw.text((px(x, lo)[0] - 10, top + h + 4), f"{x:.0f}", fill="black")
        for colour, runs in zip(colours, results.values(), strict=False):
            for r in runs:
                draw.line([px(p["cpu_s"], p[key]) for p in r["curve"]], fill=colour, width=1)
            end = min(r["cpu_s"] for r in runs)
            grid = [end * i / 40 for i in range(41)]
            mean = [
                statistics.mean(v)
                for v in zip(*(on_grid(r["curve"], key, grid) for r in runs), strict=True)
            ]
            draw.line([px(x, y) for x, y in zip(grid, mean, strict=True)], fill=colour, width=3)
    legend = 2 * (h + margin) + 30
    for i, (colour, label) in enumerate(zip(colours, results, strict=False)):
        draw.line(
            [margin, legend + 18 * i + 6, margin + 24, legend + 18 * i + 6], fill=colour, width=3
        )
        draw.text((margin + 30, legend + 18 * i), label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def section(
    rows: list[dict[str, Any]], skipped: list[str], args: argparse.Namespace, png: str
) -> str:
    command = " ".join(["OMP_NUM_THREADS=1 python benchmarks/objectives.py", *args.argv])
    lines = [
        SECTION,
        "",
        f"Written by `{command}`. Every setting trains the demo "
        f"with seeds {', '.join(map(str, args.seeds))} until its training CPU (the trainer's "
        f"`cpu/iteration`, summed; evaluations and loading not counted) reaches {args.budget:g} s, "
        f"then is stopped after the iteration in progress; the held-out set "
        f"(`evaluation.every={args.every}`) is scored along the way. Thin lines: seeds; thick: "
        "their mean.",
        "",
        f"![held-out success rate and reward against CPU seconds]({png})",
        "",
        "| setting | seeds | iterations | CPU s | held-out success (before -> final) | held-out "
        "reward (final) | CPU s to reach (b)'s final success |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        reached = "not reached" if r["reached_s"] is None else f"{r['reached_s']:.0f}"
        lines.append(
            f"| {r['label']} | {r['seeds']} | {r['iterations']:.0f} | {r['cpu_s']:.0f} | "
            f"{r['before_success']:.3f} -> {r['success']} | {r['reward']} | {reached} |"
        )
    for message in skipped:
        lines.append(f"\nSkipped: {message}")
    return "\n".join(lines) + "\n"


def write_section(doc: Path, text: str) -> None:
    """Replace this script's section of ``doc`` (up to the next ``## `` heading) or append it;
    the other sections are left as they are."""
    old = doc.read_text() if doc.is_file() else "# Training objectives\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + text + ("\n" + tail if tail else "")
    doc.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 200 s: the demo's own 100 iterations take about that much training CPU (~2 s each).
    parser.add_argument("--budget", type=float, help="training CPU seconds per run (default 200)")
    parser.add_argument("--seeds", type=int, nargs="+", help="trainer.seed values (default 0 1 2)")
    parser.add_argument("--every", type=int, help="evaluation.every (default 10)")
    parser.add_argument("--only", nargs="+", help="settings whose label starts with one of these")
    parser.add_argument("--quick", action="store_true", help="tiny runs: a check, not a result")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "objectives.md")
    parser.add_argument("--work", type=Path, help="where the runs go (default: a temp folder)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at the same time (each one process; the budget is CPU time, so runs in "
        "parallel spend the same budget)",
    )
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    quick = args.quick
    args.budget = args.budget or (2.0 if quick else 200.0)
    args.seeds = args.seeds or ([0] if quick else [0, 1, 2])
    args.every = args.every or (1 if quick else 10)
    work = args.work or Path(tempfile.mkdtemp(prefix="objectives-"))
    extra = [*COMMON, f"evaluation.every={args.every}", *(QUICK if quick else [])]

    settings = [s for s in SETTINGS if not args.only or s.label.startswith(tuple(args.only))]
    skipped: list[str] = []
    jobs: dict[str, list[Any]] = {}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # threads wait on processes
        for index, setting in enumerate(settings):
            try:
                build_recipe(setting, extra)
            except UsageError as exc:  # a plugin, recipe or option that is not installed
                message = f"{setting.label}: {exc}"
                print(f"skipped {message}", file=sys.stderr)
                skipped.append(message)
                continue
            jobs[setting.label] = []
            for seed in args.seeds:
                recipe = build_recipe(setting, [*extra, f"trainer.seed={seed}"])
                out = work / f"setting{index}" / f"seed{seed}"
                print(f"{setting.label}, seed {seed}: {out}", file=sys.stderr)
                jobs[setting.label].append(pool.submit(train, recipe, out, args.budget))
        results = {label: [job.result() for job in runs] for label, runs in jobs.items()}

    baseline = next((s.label for s in settings if s.baseline and s.label in results), None)
    target = None
    if baseline:
        target = statistics.mean(r["curve"][-1]["success_rate"] for r in results[baseline])
    rows = [summarise(label, runs, target) for label, runs in results.items()]
    png = args.doc.with_name(args.doc.stem + "_demo.png")
    plot(results, png)
    write_section(args.doc, section(rows, skipped, args, png.name))
    (work / "results.json").write_text(json.dumps({"rows": rows, "runs": results}, indent=2))
    print(f"wrote {args.doc} and {png}; runs in {work}", file=sys.stderr)
    return 0 if results and all(math.isfinite(r["cpu_s"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
