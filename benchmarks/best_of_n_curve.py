"""Best-of-N at inference on the bundled demo model: the mean reward of the selected sample for
N = 1, 2, 4, 8, 16, for the base model and for a GRPO-trained LoRA, measured.

    dance run --output-dir runs/demo                      # the default demo run (the LoRA)
    python benchmarks/best_of_n_curve.py --lora runs/demo --out docs/images/best-of-n.png

Every held-out prompt gets ``M`` candidates (ODE sampler, seeds 0 .. M-1, the same for both
models), scored with the ``shapes`` reward. For each N the expected score of the best of N
candidates drawn at random without replacement is computed exactly from all M (order
statistics: the i-th smallest of M is the maximum of C(i-1, N-1) of the C(M, N) subsets), which
has less variance than using only the first N seeds. The success rate of the selected sample is
reported the same way. Writes the PNG and a JSON of the figures next to it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

POLICY = {"model": "bundled:shapes", "height": 64, "width": 64, "max_sequence_length": 16}


def measure(policy, sampler, reward, prompts, m: int, batch: int) -> dict[str, torch.Tensor]:
    from dance.interfaces import Prompt
    from dance.sampling.generate import generate

    scores, success = [], []
    for text in prompts:
        media = generate(policy, sampler, [Prompt(text)] * m, list(range(m)), batch_size=batch)
        out = reward.score(media, [Prompt(text)] * m)
        scores.append(out["score"])
        success.append(out["success"])
    return {"score": torch.stack(scores), "success": torch.stack(success)}  # [P, M]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora", type=Path, help="a demo run directory (or its trained weights)")
    parser.add_argument("--candidates", type=int, default=16, help="M candidates per prompt")
    parser.add_argument("--prompts", default="pkg:dance_shapes/prompts/heldout.txt")
    parser.add_argument("--num-steps", type=int, default=16, help="ODE sampling steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("docs/images/best-of-n.png"))
    args = parser.parse_args()

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from dance.cli.trained import resolve_trained
    from dance.interfaces import Runtime
    from dance.registry import get_registry
    from dance.reporting.plots import overlay_chart
    from dance.sampling.best_of_n import expected_best_of_n
    from dance.training.prompts import read_prompts

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    registry, runtime = get_registry(), Runtime.auto()
    sampler = registry.create("sampler", "ode", {"num_steps": args.num_steps}, runtime)
    reward = registry.create("reward", "shapes", {}, runtime)
    prompts = [entry.text for entry in read_prompts(args.prompts)]
    ns = [n for n in (1, 2, 4, 8, 16, 32) if n <= args.candidates]

    models: dict[str, tuple] = {"base model": (None, dict(POLICY))}
    if args.lora:
        trained, run_config = resolve_trained(args.lora)
        # the run's own LoRA settings (rank, alpha), so that its weights fit
        options = {k: v for k, v in (run_config or {}).get("policy", {}).items() if k != "name"}
        models["GRPO LoRA (demo run)"] = (trained, {**POLICY, **options})
    results: dict[str, dict] = {}
    for label, (trained, options) in models.items():
        start = time.perf_counter()
        policy = registry.create("policy", "flux", options, runtime)
        if trained is not None:
            policy.load_trained(str(trained))
        table = measure(policy, sampler, reward, prompts, args.candidates, args.batch_size)
        results[label] = {
            "mean_score": {n: expected_best_of_n(table["score"], table["score"], n) for n in ns},
            "success_rate": {
                n: expected_best_of_n(table["score"], table["success"], n) for n in ns
            },
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(f"{label}: {results[label]}")

    overlay_chart(
        {label: list(r["mean_score"].items()) for label, r in results.items()},
        args.out,
        f"Best-of-N on the demo model: mean shapes score of the selected image "
        f"({len(prompts)} held-out prompts, {args.candidates} candidates each)",
        x_label="N (candidates per prompt)",
        y_label="shapes score",
        log2_x=True,
    )
    figures = {
        "candidates": args.candidates,
        "prompts": args.prompts,
        "num_steps": args.num_steps,
        "lora": str(args.lora) if args.lora else None,
        "results": results,
    }
    args.out.with_suffix(".json").write_text(json.dumps(figures, indent=2))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
