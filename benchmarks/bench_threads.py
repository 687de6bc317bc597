"""CPU threads: the demo's iteration time at 1 and 2 torch threads, side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_threads.py            # options: --repeats --threads

Builds the bundled demo recipe (`dance run` with no arguments; evaluation off) on the CPU and runs
its GRPO iterations alternately at each thread count (1, 2, 1, 2, ...), after one warm-up
iteration per count, so that both see the same load from whatever else the machine runs. Printed:
every iteration's time, the median per thread count, and each median's ratio to 1 thread's. Also
printed: the load average before and after, since on a shared machine that decides the result.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def build_demo_trainer(out: Path):
    from dance.cli.recipe import read_recipe, resolve
    from dance.interfaces import Runtime
    from dance.registry import get_registry
    from dance.training.trainer import Trainer

    raw = read_recipe("demo")
    raw["evaluation"] = {}  # iterations only
    raw.setdefault("trainer", {})["sample_every"] = 0
    registry = get_registry()
    return Trainer(resolve(raw, registry), out, Runtime.auto("cpu"), registry)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4, help="timed iterations per count")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="counts to compare")
    args = parser.parse_args()

    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_demo_trainer(Path(tmp))
        times: dict[int, list[float]] = {n: [] for n in args.threads}
        iteration = 0
        for round_ in range(args.repeats + 1):  # round 0 warms up each count
            for n in args.threads:
                torch.set_num_threads(n)
                start = time.perf_counter()
                trainer.iteration(iteration)
                seconds = time.perf_counter() - start
                iteration += 1
                if round_:
                    times[n].append(seconds)
                print(f"  {n} thread(s), iteration {iteration}: {seconds:.2f} s", flush=True)
    print(f"load after: {os.getloadavg()}")
    base = statistics.median(times[args.threads[0]])
    print(f"median s/iteration over {args.repeats} iterations, ratio to {args.threads[0]} thread:")
    for n in args.threads:
        median = statistics.median(times[n])
        print(f"  {n} thread(s): {median:.2f} s  ratio {median / base:.2f}")


if __name__ == "__main__":
    main()
