"""Does GRPO learn a reward, or only drift? A fixed-batch check, side by side in one run.

    python benchmarks/fixed_batch_check.py --reward jpeg-incompressibility
    python benchmarks/fixed_batch_check.py --reward shapes.fidelity sampler.sde_window_size=3

One prompt is re-rolled every iteration from the same initial noise and the same SDE noise, so
the batch cannot change except through the weights. The same number of iterations runs three
times from the base model, with the real advantages, with their sign flipped, and with random
advantages (pure drift). The real and negated runs must differ (the update follows the sign of the
advantages) and the random run shows the drift of noisy updates. With the noise held fixed, the
score-function update pushes each re-rolled sample further along the noise it already drew: a
reward that keeps rising that way is learned, one peaked near the good samples may overshoot. So
the check tests direction and drift, not whether a reward can be learned in expectation.
Defaults: the bundled demo recipe, one held-out prompt, 16 samples with unshared initial noise,
no KL. Extra ``section.field=value`` arguments override the recipe.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

MODES = ("real", "negated", "random")


def run(mode: str, args: argparse.Namespace, out: Path) -> list[float]:
    from dance.cli.recipe import apply_override, parse_reward_arg, read_recipe, resolve
    from dance.interfaces import Runtime
    from dance.registry import get_registry
    from dance.training.trainer import Trainer

    raw = read_recipe(args.recipe)
    raw["rewards"] = [parse_reward_arg(args.reward)]
    raw["evaluation"] = {}
    prompts = out / "prompt.txt"
    prompts.write_text(args.prompt + "\n")
    defaults = [
        f"trainer.prompts={prompts}",
        "trainer.prompts_per_iteration=1",
        f"trainer.group_size={args.group}",
        "trainer.share_initial_noise=false",
        "objective.kl_coef=0",
        "trainer.sample_every=0",
    ]
    for assignment in defaults + args.overrides:
        apply_override(raw, assignment)
    trainer = Trainer(resolve(raw, get_registry()), out / mode, Runtime(), get_registry())
    label = next(iter(trainer.weights))

    rollout = trainer.rollout
    trainer.rollout = lambda prompts, index, it: rollout(prompts, index, 0)  # same noise always
    compute = trainer.advantage.compute
    gen = torch.Generator().manual_seed(0)

    def advantages(*a, **k):  # noqa: ANN002, ANN003, ANN202
        real = compute(*a, **k)
        if mode == "negated":
            return -real
        if mode == "random":
            return torch.randn(real.shape, generator=gen).to(real)
        return real

    trainer.advantage.compute = advantages
    return [trainer.iteration(it)[f"reward/{label}/mean"] for it in range(args.iterations)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reward", default="shapes.fidelity", help="NAME[.COMPONENT]")
    parser.add_argument("--recipe", default="demo")
    parser.add_argument("--prompt", default="a red square at the top")
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("overrides", nargs="*", help="section.field=value")
    args = parser.parse_args()

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        curves = {mode: run(mode, args, Path(tmp)) for mode in MODES}
    print(f"reward {args.reward}, prompt {args.prompt!r}, {args.group} samples, {args.overrides}")
    print(f"{'advantages':<12}{'first':>9}{'last 5':>9}{'change':>9}")
    for mode, curve in curves.items():
        first, last = curve[0], sum(curve[-5:]) / len(curve[-5:])
        print(f"{mode:<12}{first:>9.3f}{last:>9.3f}{last - first:>+9.3f}")


if __name__ == "__main__":
    main()
