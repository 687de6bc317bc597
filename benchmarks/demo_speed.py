"""CPU work of the default `dance run` (the bundled demo), before and after issue 12, side by side.

    OMP_NUM_THREADS=1 python benchmarks/demo_speed.py                 # both runs in full
    OMP_NUM_THREADS=1 python benchmarks/demo_speed.py --iterations 5  # a quick estimate

Runs the demo recipe as it was (`OLD_OVERRIDES` on top of today's `dance/recipes/demo.toml`, and
the sampling loop computing every row, as it did before
`dance.sampling.generate.predict_distinct`) and the
demo recipe as it is, in two processes started together, so that both see the same load on a
shared machine. Each process counts its own CPU seconds (`time.process_time`: user + system, all
threads) for the start-up (imports, model loading), each evaluation, each iteration and the rest
(checkpoints, the report). Wall-clock times on a shared machine say little; CPU seconds of one
thread are the work done.

With `--iterations K` both runs stop after K iterations and the full run's CPU time is projected
as start-up + evaluations + rest + (mean CPU per iteration x the recipe's iterations). Printed: the
figures of each side and the ratio new / old.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The demo recipe before issue 12, as overrides of today's recipe.
OLD_OVERRIDES = ["trainer.iterations=150", "objective.old_log_probs=recompute"]


def child(side: str, iterations: int | None, out: Path) -> dict[str, Any]:
    """One demo run in this process; returns its CPU seconds by phase."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import dance.sampling.generate
    from dance.cli.app import _raw_recipe
    from dance.cli.recipe import resolve
    from dance.interfaces import Runtime
    from dance.registry import get_registry
    from dance.training.trainer import Trainer

    overrides = list(OLD_OVERRIDES) if side == "old" else []
    if side == "old":  # every row computed, as before predict_distinct
        dance.sampling.generate.predict_distinct = lambda policy, x, t, cond: policy.predict(
            x, t, cond
        )
    registry = get_registry()
    recipe = resolve(_raw_recipe("demo", None, None, None, None, overrides), registry)
    full_iterations = recipe.trainer.iterations
    if iterations is not None:
        recipe.trainer.iterations = iterations
    trainer = Trainer(recipe, out, runtime=Runtime(), registry=registry)
    cpu: dict[str, Any] = {"startup": time.process_time(), "evaluation": [], "iteration": []}

    def timed(method, key):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            start = time.process_time()
            result = method(*args, **kwargs)
            cpu[key].append(time.process_time() - start)
            return result

        return wrapper

    trainer.evaluate = timed(trainer.evaluate, "evaluation")
    trainer.iteration = timed(trainer.iteration, "iteration")
    wall = time.perf_counter()
    summary = trainer.run()
    cpu["wall_run"] = time.perf_counter() - wall
    cpu["total"] = time.process_time()
    cpu["rest"] = cpu["total"] - cpu["startup"] - sum(cpu["evaluation"]) - sum(cpu["iteration"])
    cpu["full_iterations"] = full_iterations
    per_iteration = sum(cpu["iteration"]) / len(cpu["iteration"])
    cpu["per_iteration"] = per_iteration
    cpu["projected_total"] = (
        cpu["startup"] + sum(cpu["evaluation"]) + cpu["rest"] + per_iteration * full_iterations
    )
    before, after = summary.get("eval_before", {}), summary.get("eval_after", {})
    change = summary.get("eval_change", {}).get("reward", {})
    cpu["result"] = {
        "reward_mean": [before.get("reward_mean"), after.get("reward_mean")],
        "success_rate": [before.get("success_rate"), after.get("success_rate")],
        "images_better_worse": [change.get("images_better"), change.get("images_worse")],
        "sign_test_p": change.get("sign_test_p"),
    }
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=None, help="stop both runs after K")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of each run")
    parser.add_argument("--child", choices=("old", "new"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.iterations, args.out)))
        return

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    extra = ["--iterations", str(args.iterations)] if args.iterations else []
    with tempfile.TemporaryDirectory() as tmp:
        procs = {
            side: subprocess.Popen(
                [sys.executable, __file__, "--child", side, "--out", f"{tmp}/{side}", *extra],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for side in ("old", "new")
        }
        cpu = {}
        for side, proc in procs.items():
            out, err = proc.communicate()
            if proc.returncode:
                sys.exit(f"the {side} run failed:\n{err[-3000:]}")
            cpu[side] = json.loads(out.strip().splitlines()[-1])

    print(f"OMP_NUM_THREADS={args.threads}; CPU seconds (user + system) of each run")
    rows = [
        ("start-up (imports, models)", lambda c: c["startup"]),
        ("evaluation, each", lambda c: sum(c["evaluation"]) / len(c["evaluation"])),
        ("iteration, mean", lambda c: c["per_iteration"]),
        ("iterations of the recipe", lambda c: c["full_iterations"]),
        ("rest (checkpoints, report)", lambda c: c["rest"]),
        ("whole run" + (" (projected)" if args.iterations else ""), _whole),
    ]
    print(f"{'':30} {'old':>9} {'new':>9} {'new/old':>8}")
    for label, get in rows:
        old, new = get(cpu["old"]), get(cpu["new"])
        print(f"{label:30} {old:9.2f} {new:9.2f} {new / old:8.3f}")
    for side in ("old", "new"):
        run = cpu[side]
        print(f"{side}: wall {run['wall_run']:.0f} s for the run, result {run['result']}")


def _whole(cpu: dict[str, Any]) -> float:
    return cpu["projected_total"]


if __name__ == "__main__":
    main()
