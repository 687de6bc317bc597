"""GPU suite: every policy at its published setting, on full-size networks with random weights.

    python benchmarks/gpu_suite.py                       # one GPU (H200/H100), about 9 minutes
    python benchmarks/gpu_suite.py --tiny --out t.json   # the same code on tiny models, on CPU
    python benchmarks/gpu_suite.py --policies flux,sd --budget-s 300 --peak-tflops 989

Policies come from the plugins' ``register_benchmark_specs`` hook (dance.models.bench_spec): each
names its bundled recipe with DanceGRPO's setting, the full-size configs of its networks (written
from
the published config.json files) and its tiny counterpart. Networks are built from those configs
with random bf16 weights, materialised directly on the device (meta-device construction, then
``to_empty`` and an initialiser: dance.models.random_weights), and loaded through the policy's own
``from_pretrained`` calls, so what is measured is dance's code on networks of the real size.

For each policy, at the published setting:

* per-unit figures: seconds to encode a new prompt, seconds per (sample, step) of the rollout,
  per sample decoded and scored, per trained (sample, step) pair of the update;
* FLOPs (torch.utils.flop_counter) of one forward and of one update micro-batch (forward and
  backward), and the update's model FLOPs utilisation over the device's peak bf16 FLOP/s
  (looked up by device name, or --peak-tflops); with gradient checkpointing the recomputed
  forward is left out of the model FLOPs (it is in the "hfu" figure);
* one real Trainer.iteration at reduced size (one prompt, --check-group samples, at most
  --check-steps trained steps per sample) and whether the per-unit figures predict it within 15%;
  its peak GPU memory (max allocated and reserved);
* seconds per iteration and samples (images or videos) per GPU-second of the full published
  setting, computed from the per-unit figures and labelled as computed;
* dance's rollout against the model's plain diffusers pipeline (same network, steps, batch and
  resolution), as benchmarks/bench_grpo.py does on CPU.

A setting that runs out of GPU memory is reported with the memory figure, then tried again with
policy.offload_frozen=true and with trainer.fsdp_cpu_offload=true (reported as unavailable where
this dance has no such option). ``--budget-s`` (default 540 s, 9 minutes including building the
networks) plans the run from each spec's cost estimate and skips, saying so, what would not fit.
Writes ``--out`` (JSON, every figure) and a Markdown table next to it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from gpu_suite_measure import (  # noqa: E402
    SuiteContext,
    is_out_of_memory,
    measure_policy,
    oom_figures,
    release,
)
from gpu_suite_report import markdown_table  # noqa: E402
from gpu_suite_rewards import RewardFiles  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets; the first
# name found in torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_BF16_TFLOPS = (
    ("H200", 989.4),
    ("GH200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM
    ("H800", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("RTX 4090", 165.2),
)
TINY_COST_ESTIMATE_S = 20.0  # a tiny policy on 2 CPU cores


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    """The device's peak bf16 FLOP/s and where the figure comes from."""
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return None, "unknown for a CPU: give --peak-tflops"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12, f"table entry '{key}' for device '{name}'"
    return None, f"device '{name}' is not in the table: give --peak-tflops"


def memory_variants(offloaded: bool) -> list[tuple[dict[str, Any], str | None]]:
    """Options that should make a setting fit, each with why it cannot be tried (or None);
    ``offloaded``: the setting keeps its frozen parts in CPU memory already."""
    from dance.training.trainer_config import TrainerConfig

    variants: list[tuple[dict[str, Any], str | None]] = []
    if not offloaded:
        variants.append(({"policy.offload_frozen": True}, None))
    has_fsdp_offload = "fsdp_cpu_offload" in {f.name for f in fields(TrainerConfig)}
    variants.append(
        (
            {"policy.offload_frozen": True, "trainer.fsdp_cpu_offload": True},
            None if has_fsdp_offload else "unavailable: this dance has no trainer.fsdp_cpu_offload",
        )
    )
    return variants


def run_policy(spec: Any, ctx: SuiteContext, estimate_s: float) -> dict[str, Any]:
    """The policy as published; on running out of memory, each memory option in turn."""
    from dance.cli.recipe import read_recipe

    head = {"policy": spec.policy, "model": spec.model, "config_sources": dict(spec.config_sources)}
    attempts: list[dict[str, Any]] = []
    plan: list[tuple[dict[str, Any], str | None]] = [({}, None)]
    # Whether the setting offloads already: the recipe's value, else the policy's default.
    config_class = ctx.registry.get("policy", spec.policy).config_class
    default = {f.name: f.default for f in fields(config_class)}.get("offload_frozen", False)
    recipe_value = read_recipe(spec.recipe).get("policy", {}).get("offload_frozen", default)
    offloaded = bool(spec.overrides.get("policy.offload_frozen", recipe_value))
    plan += memory_variants(offloaded)
    for extra, unavailable in plan:
        release(ctx.device)  # what a failed attempt left, now that its exception is gone
        if unavailable:
            attempts.append({"options": extra, "status": unavailable})
            continue
        if attempts and time.perf_counter() + estimate_s > ctx.deadline:
            attempts.append({"options": extra, "status": "not tried: the budget is spent"})
            continue
        try:
            result = measure_policy(spec, ctx, extra)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            attempts.append({"options": extra, **oom_figures(ctx.device, exc)})
            continue
        attempts.append({"options": extra, "status": "ok"})
        return {**head, "status": "ok", "options": extra, **result, "attempts": attempts}
    return {**head, "status": "out of memory in every configuration tried", "attempts": attempts}


def environment(device: torch.device, peak_source: str, args: argparse.Namespace) -> dict:
    import diffusers
    import transformers

    env = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "peak_flops_source": peak_source,
        "tiny": args.tiny,
        "budget_s": args.budget_s,
        "check_group": args.check_group,
        "check_steps": args.check_steps,
        "repeats": args.repeats,
    }
    return env


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoints on the CPU")
    parser.add_argument("--policies", default="", help="comma-separated policy names (all)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="seconds for the whole run")
    parser.add_argument("--out", type=Path, default=Path("gpu_suite.json"), help="JSON to write")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device's peak bf16")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    parser.add_argument("--check-group", type=int, default=2, help="samples of the check iteration")
    parser.add_argument("--check-steps", type=int, default=3, help="trained steps per sample there")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (1; 3 --tiny)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder's parent")
    args = parser.parse_args(argv)
    if args.check_group < 2:
        parser.error("--check-group must be at least 2 (a group needs two samples)")
    if args.repeats is None:
        args.repeats = 3 if args.tiny else 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from dance.models.bench_spec import benchmark_specs
    from dance.registry import get_registry

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    torch.manual_seed(0)

    if args.device:
        device = torch.device(args.device)
    elif args.tiny or not torch.cuda.is_available():
        device = torch.device("cpu")
    else:
        device = torch.device("cuda")
    if device.type != "cuda" and not args.tiny:
        print("gpu_suite: full-size networks need a CUDA GPU; use --tiny on a CPU", file=sys.stderr)
        return 2
    registry = get_registry()
    specs = benchmark_specs(registry)
    names = [n.strip() for n in args.policies.split(",") if n.strip()] or sorted(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        print(
            f"gpu_suite: no benchmark spec for policy '{unknown[0]}' (known: {', '.join(specs)})",
            file=sys.stderr,
        )
        return 2
    peak, peak_source = peak_flops(device, args.peak_tflops)
    deadline = start + args.budget_s
    estimates = {n: TINY_COST_ESTIMATE_S if args.tiny else specs[n].cost_estimate_s for n in names}
    report: dict[str, Any] = {"environment": environment(device, peak_source, args), "policies": {}}
    # Installed policies whose plugin registers no spec: the suite cannot measure them.
    report["policies_without_spec"] = [n for n in registry.names("policy") if n not in specs]
    if report["policies_without_spec"]:
        missing = ", ".join(report["policies_without_spec"])
        print(f"gpu_suite: no benchmark spec registered for {missing}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-suite-", dir=args.workdir) as tmp:
        root = Path(tmp)
        ctx = SuiteContext(
            root=root,
            device=device,
            tiny=args.tiny,
            registry=registry,
            rewards=RewardFiles(root / "rewards", args.tiny, device),
            peak_flops=peak,
            check_group=args.check_group,
            check_steps=args.check_steps,
            repeats=args.repeats,
            deadline=deadline,
        )
        (root / "rewards").mkdir()
        for k, name in enumerate(names):
            later = sum(estimates[n] for n in names[k + 1 :])
            left = deadline - time.perf_counter()
            if estimates[name] > left:
                report["policies"][name] = {
                    "policy": name,
                    "model": specs[name].model,
                    "status": f"skipped: estimated {estimates[name]:.0f} s, {left:.0f} s of the "
                    "budget left",
                }
                print(f"{name}: {report['policies'][name]['status']}", flush=True)
                continue
            # What this policy may use: leave the later policies their estimates.
            ctx.deadline = max(time.perf_counter() + estimates[name], deadline - later)
            began = time.perf_counter()
            try:
                result = run_policy(specs[name], ctx, estimates[name])
            except Exception as exc:  # reported, and the other policies still run
                traceback.print_exc()
                detail = " ".join(str(exc).split())[:300]
                result = {
                    "policy": name,
                    "model": specs[name].model,
                    "status": f"error: {type(exc).__name__}: {detail}",
                }
                release(device)
            result["wall_s"] = time.perf_counter() - began
            report["policies"][name] = result
            print(f"{name}: {result['status']} in {result['wall_s']:.1f} s", flush=True)
    report["environment"]["wall_s"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    failed = [n for n, r in report["policies"].items() if r["status"].startswith("error")]
    table = markdown_table(report)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    if failed:
        print(f"gpu_suite: {', '.join(failed)} failed (see {args.out})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
