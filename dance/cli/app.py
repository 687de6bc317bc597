"""The `dance` command: run GRPO, sample from a trained policy, list plugins.

A user mistake (an unknown name, a missing file, an out-of-range value) is printed as one line and
exits with code 2; a fault the user cannot fix by editing the command (a corrupt or truncated file,
a full disk, a permission denied) or a failure during a run (a reward that fails, training that
diverges, another process's error) exits with code 1 after one line saying what failed. A run
stopped by Ctrl-C or SIGTERM finishes its iteration, checkpoints and exits with 128 + the signal
number (130, 143).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer

from dance.errors import RunError, UsageError
from dance.reporting.run_folders import (
    LATEST,
    RUNS_ROOT,
    choose_run_dir,
    latest_run,
    remove_if_unused,
    resolve_run_dir,
)

# Recent typer releases vendor click, older ones use click itself: reach the class through typer.
_ClickUsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    help="GRPO post-training for image and video generators (DanceGRPO).",
)

DEFAULT_RECIPE = "demo"

Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="key=value overrides of any config field, e.g. trainer.group_size=8"),
]


Threads = Annotated[
    int | None,
    typer.Option(
        help="CPU threads for torch (default: OMP_NUM_THREADS if set, else on the CPU half the "
        "CPUs, at least 1; see docs/performance.md)",
        min=1,
    ),
]


def _raw_recipe(
    recipe: str | None,
    policy: str | None,
    model: str | None,
    sampler: str | None,
    rewards: list[str] | None,
    overrides: list[str] | None,
    objective: str | None = None,
) -> dict[str, Any]:
    from dance.cli.recipe import apply_override, parse_reward_arg, read_recipe

    raw = read_recipe(recipe) if recipe else {}
    if policy:
        if raw.get("policy", {}).get("name") not in (None, policy):
            raw["policy"] = {}  # another policy's options do not apply to this one
        raw.setdefault("policy", {})["name"] = policy
    if model:
        raw.setdefault("policy", {})["model"] = model
    if sampler and raw.get("sampler", {}).get("name") != sampler:
        raw["sampler"] = {"name": sampler}  # the recipe's options were for another sampler
    if rewards:
        raw["rewards"] = [parse_reward_arg(r) for r in rewards]
    if objective and raw.get("objective", {}).get("name", "grpo") != objective:
        dropped = sorted(k for k in raw.get("objective", {}) if k != "name")
        if dropped:  # the recipe's options were for another objective
            was = raw["objective"].get("name", "grpo")
            typer.echo(
                f"note: --objective {objective} replaces the recipe's [objective] table (of "
                f"'{was}': {', '.join(dropped)}); set {objective}'s options with "
                f"objective.FIELD=VALUE (`dance plugins {objective}` lists them).",
                err=True,
            )
        raw["objective"] = {"name": objective}
    elif objective:
        raw.setdefault("objective", {})["name"] = objective
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return raw


@app.command()
def run(
    overrides: Overrides = None,
    recipe: Annotated[
        str | None, typer.Option(help="bundled recipe name or path to a recipe TOML file")
    ] = None,
    policy: Annotated[str | None, typer.Option(help="policy (foundation model) name")] = None,
    model: Annotated[
        str | None, typer.Option(help="model directory or Hugging Face repo id in the local cache")
    ] = None,
    sampler: Annotated[str | None, typer.Option(help="sampler name")] = None,
    reward: Annotated[
        list[str] | None,
        typer.Option(help="NAME[.COMPONENT][:WEIGHT]; repeat for several rewards"),
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option(
            help="training objective: grpo (default), nft, ... (its options: `dance plugins NAME`)"
        ),
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            help="where the run writes everything (default: a new folder "
            "runs/<date>_<time>_<recipe>, and runs/latest points at it)"
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="continue the run in --output-dir (default: runs/latest) from its last checkpoint"
        ),
    ] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: auto)")] = None,
    progress: Annotated[
        bool,
        typer.Option(help="show progress: a bar on a terminal, else one plain line per iteration"),
    ] = True,
    threads: Threads = None,
) -> None:
    """Train a policy against one or more rewards (GRPO by default, or another --objective)."""
    from dance.cli.recipe import resolve
    from dance.cli.threads import use_threads
    from dance.files import check_writable_dir
    from dance.registry import get_registry
    from dance.training.prompts import read_prompts
    from dance.training.trainer import Trainer

    _quiet_libraries()
    registry = get_registry()
    new_folder = output_dir is None and not resume
    if output_dir is not None:
        output_dir = resolve_run_dir(output_dir)
    elif resume:
        output_dir = latest_run(RUNS_ROOT)
        if output_dir is None:
            raise UsageError(
                f"nothing to resume: {RUNS_ROOT / LATEST} does not lead to a run; pass "
                "--output-dir with the run's folder."
            )
    # Without --output-dir and --resume, a new run folder is chosen once the recipe is valid.
    if resume and recipe is None and output_dir and (output_dir / "config.toml").is_file():
        # Resuming takes the run's own resolved config; overrides still apply on top.
        recipe = str(output_dir / "config.toml")
        _check_resume_policy(recipe, policy, output_dir)
    elif not resume and output_dir and (output_dir / "checkpoints" / "latest").is_file():
        raise UsageError(
            f"{output_dir} already holds a run; pass --resume to continue it, or choose another "
            "--output-dir."
        )
    if recipe is None and policy is None:
        _check_demo_options(model, sampler, reward)
        recipe = DEFAULT_RECIPE  # `dance run` alone: the bundled demo
    raw = _raw_recipe(recipe, policy, model, sampler, reward, overrides, objective)
    resolved = resolve(raw, registry)
    if resume and recipe == str(output_dir / "config.toml"):
        _note_changed_settings(recipe, resolved.to_toml_dict())
    # Files and folders the run needs are checked before minutes of model loading.
    read_prompts(resolved.trainer.prompts)  # "" reads the bundled list
    if resolved.evaluation.prompts:
        read_prompts(resolved.evaluation.prompts)
    if output_dir is not None:  # a new run folder under runs/ is checked as it is made
        check_writable_dir(output_dir, "--output-dir")
    _init_distributed(resolved.trainer.distributed_timeout)
    import dance.distributed as dist
    from dance.interfaces import Runtime

    previous = None
    if output_dir is None:
        output_dir, previous = choose_run_dir(recipe, resolved.policy)
        if dist.is_main():
            typer.echo(f"run folder: {output_dir} ({RUNS_ROOT / LATEST} points at it)")
    try:
        runtime = Runtime.auto(device)
        described = use_threads(threads, runtime.device)
        if dist.is_main() and runtime.device.type == "cpu":
            typer.echo(f"device: cpu, {described}")
        trainer = Trainer(
            resolved, output_dir, runtime=runtime, registry=registry, progress=progress
        )
        summary = trainer.run(resume=resume)
    except BaseException:
        if new_folder and dist.is_main():  # a run that failed at once leaves no empty folder
            remove_if_unused(output_dir, RUNS_ROOT, previous)
        raise
    if dist.is_main():
        _print_summary(summary, output_dir)
    dist.shutdown()
    if trainer.stopped_by:  # stopped by a signal, after its checkpoint: not a finished run
        raise typer.Exit(128 + trainer.stopped_by)


def _note_changed_settings(saved_config: str, now: dict[str, Any]) -> None:
    """One note (rank 0) naming the settings a resumed run changes from its config.toml, which
    is then rewritten with them: the record of the run says what trained from here on."""
    import os

    from dance.cli.recipe import read_recipe

    def flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in table.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    before, after = flat(read_recipe(saved_config)), flat(now)
    changed = [
        f"{key} {before.get(key, '(unset)')!r} -> {after.get(key, '(unset)')!r}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]
    if changed and os.environ.get("RANK", "0") == "0":
        typer.echo(
            f"note: resuming with changed settings: {'; '.join(changed)} (config.toml is updated)",
            err=True,
        )


def _check_demo_options(model: str | None, sampler: str | None, rewards: list[str] | None) -> None:
    """`dance run` without --recipe and --policy trains the bundled demo; --model, --sampler or
    --reward alone would quietly change a piece of it, and the demo's other settings (its
    evaluation reward, its model's size) would then fail with a message about those instead."""
    given = [
        flag
        for flag, value in (("--model", model), ("--sampler", sampler), ("--reward", rewards))
        if value
    ]
    if given:
        raise UsageError(
            f"{' and '.join(given)} without --policy: say which policy to train, e.g. --policy"
            " flux (see `dance plugins`), or pass --recipe demo to change the bundled demo."
        )


def _check_resume_policy(recipe: str, policy: str | None, output_dir: Path) -> None:
    """--resume continues the run's own policy: another --policy would load other weights into
    it (and its sampler, rewards and checkpoint would not fit), so say which one the run used."""
    from dance.cli.recipe import parse_toml
    from dance.files import read_text

    if not policy:
        return
    raw = parse_toml(read_text(recipe, "run config", "the config.toml a run writes"), recipe)
    made_with = raw.get("policy", {}).get("name")
    if made_with and made_with != policy:
        raise UsageError(
            f"the run in {output_dir} was made with policy '{made_with}', not '{policy}'; drop"
            f" --policy to resume it, or start a new run in another --output-dir."
        )


def _print_summary(summary: dict[str, Any], output_dir: Path) -> None:
    stopped_by = {"SIGINT": "Ctrl-C"}.get(summary.get("stopped_by"), summary.get("stopped_by"))
    what = f"stopped by {stopped_by}" if summary["interrupted"] else "finished"
    typer.echo(
        f"{what} after {summary['iterations']} iterations; checkpoint: {summary['checkpoint']}"
    )
    before, after = summary.get("eval_before"), summary.get("eval_after")
    if before and after:
        typer.echo(f"evaluation on {after['images']} held-out images, before -> after training:")
        for key in ("reward_mean", "success_rate"):
            if key in before and key in after:
                typer.echo(f"  {key:<13} {before[key]:.3f} -> {after[key]:.3f}")
        change = summary.get("eval_change", {}).get("reward")
        if change:
            typer.echo(
                f"  reward better on {change['images_better']} images, worse on "
                f"{change['images_worse']} (sign test p = {change['sign_test_p']:.2g})"
            )
    files = summary.get("files", {})
    typer.echo("files: " + ", ".join(str(output_dir / name) for name in files.values()))


def _quiet_libraries() -> None:
    """diffusers and transformers print a progress bar per loaded component; dance has its own."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _init_distributed(timeout_s: float) -> None:
    import dance.distributed as dist

    dist.init_from_env(timeout_s)


def _finite_option(value: float) -> float:
    """Typer callback: a float option must be a finite number (click's ranges let inf and nan
    through)."""
    import math

    if not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


@app.command()
def sample(
    overrides: Overrides = None,
    policy: Annotated[str | None, typer.Option(help="policy name")] = None,
    model: Annotated[str | None, typer.Option(help="base model directory or repo id")] = None,
    lora: Annotated[
        Path | None,
        typer.Option(help="trained weights: a run directory, a checkpoint, or its trained/ folder"),
    ] = None,
    prompt: Annotated[list[str] | None, typer.Option(help="prompt; repeat for several")] = None,
    prompts_file: Annotated[
        Path | None,
        typer.Option(help="one prompt per line; .jsonl: one {prompt, image or video} per line"),
    ] = None,
    num_per_prompt: Annotated[int, typer.Option(help="images per prompt", min=1)] = 1,
    sampler: Annotated[
        str,
        typer.Option(
            help="sampler; default: the deterministic one for the policy (ode, or ddim with eta 0)"
        ),
    ] = "",
    seed: Annotated[int, typer.Option(help="seed of the first image; then seed+1, ...")] = 0,
    batch_size: Annotated[int, typer.Option(help="images per forward pass", min=1)] = 4,
    output_dir: Annotated[Path, typer.Option(help="where images are written")] = Path("samples"),
    fps: Annotated[
        float,
        typer.Option(help="frames per second of written videos", min=1, callback=_finite_option),
    ] = 24,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: auto)")] = None,
    best_of: Annotated[
        int | None,
        typer.Option(
            "--best-of",
            help="draw N candidates per prompt and keep the one --reward scores best",
            min=1,
        ),
    ] = None,
    reward: Annotated[
        list[str] | None,
        typer.Option(help="with --best-of: NAME[.COMPONENT][:WEIGHT]; repeat to combine rewards"),
    ] = None,
    threads: Threads = None,
) -> None:
    """Generate images from a base model, optionally with trained weights (and Best-of-N)."""
    from dance.cli.recipe import apply_override, parse_reward_arg, resolve_reward
    from dance.cli.threads import use_threads
    from dance.cli.trained import resolve_trained
    from dance.config import build, to_dict
    from dance.files import check_writable_dir
    from dance.interfaces import Runtime
    from dance.registry import get_registry
    from dance.sampling.best_of_n import sample_best_of_n
    from dance.sampling.generate import generate, save_media
    from dance.training.prompts import PromptEntry, read_prompts

    _quiet_libraries()
    registry = get_registry()
    if reward and best_of is None:
        raise UsageError("--reward selects among candidates: add --best-of N.")
    if best_of is not None and not reward:
        raise UsageError("--best-of N needs a reward to choose with: add --reward NAME[:WEIGHT].")
    if best_of is not None and num_per_prompt != 1:
        raise UsageError("--best-of keeps one image per prompt: drop --num-per-prompt.")
    raw: dict[str, Any] = {"policy": {}, "sampler": {}}
    raw["rewards"] = [parse_reward_arg(r) for r in reward or []]
    if lora is not None:
        trained, run_config = resolve_trained(lora)
        if run_config:  # the run's own policy settings, unless the command line says otherwise
            raw["policy"] = dict(run_config.get("policy", {}))
    if policy:
        raw["policy"]["name"] = policy
    if model:
        raw["policy"]["model"] = model
    for assignment in overrides or []:
        apply_override(raw, assignment)
    policy_name = raw["policy"].pop("name", None)
    if not policy_name:
        raise UsageError("no policy chosen: pass --policy NAME (see `dance plugins`).")
    entries = [PromptEntry(t) for t in prompt or []]
    entries += read_prompts(str(prompts_file)) if prompts_file else []
    if not entries:
        raise UsageError("no prompt given: pass --prompt TEXT or --prompts-file FILE.")
    runtime = Runtime.auto(device)
    use_threads(threads, runtime.device)
    check_writable_dir(output_dir, "--output-dir")  # before the model loads
    policy_cls = registry.get("policy", policy_name)
    policy_obj = policy_cls(build(policy_cls.config_class, raw["policy"], "policy."), runtime)
    if not sampler:
        sampler, defaults = registry.deterministic_sampler(policy_cls.prediction_type)
        raw["sampler"] = {**defaults, **raw["sampler"]}
    sampler_cls = registry.get("sampler", sampler)
    sampler_cfg = build(sampler_cls.config_class, raw["sampler"], "sampler.")
    sampler_obj = sampler_cls(sampler_cfg, runtime)
    if lora is not None:
        policy_obj.load_trained(str(trained))
    prompts = [p for p in (e.load() for e in entries) for _ in range(num_per_prompt)]
    if best_of is not None:
        rewards = [resolve_reward(entry, policy_cls, registry) for entry in raw["rewards"]]
        scorers = [
            (spec, registry.create("reward", spec.name, spec.options, runtime)) for spec in rewards
        ]
        media, seeds, records = sample_best_of_n(
            policy_obj, sampler_obj, prompts, best_of, scorers, seed, batch_size
        )
    else:
        seeds = list(range(seed, seed + len(prompts)))
        media = generate(policy_obj, sampler_obj, prompts, seeds, batch_size=batch_size)
    paths = save_media(media, prompts, seeds, output_dir, fps=fps)
    manifest = {
        "policy": policy_name,
        "policy_options": to_dict(policy_obj.config),
        "sampler": sampler,
        "sampler_options": to_dict(sampler_cfg),
        "trained": str(lora) if lora else None,
        ("videos" if media.ndim == 5 else "images"): [
            {"file": p.name, "prompt": pr.text, "seed": s}
            for p, pr, s in zip(paths, prompts, seeds, strict=True)
        ],
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "samples.json").write_text(json.dumps(manifest, indent=2))
    if best_of is not None:
        report = {
            "best_of": best_of,
            "rewards": [
                {"name": r.name, "component": r.component, "weight": r.weight, "options": r.options}
                for r in rewards
            ],
            "seed_rule": "candidate j of prompt i has seed --seed + i * N + j",
            "policy": policy_name,
            "sampler": sampler,
            "trained": str(lora) if lora else None,
            "prompts": [
                {**record, "file": path.name} for record, path in zip(records, paths, strict=True)
            ],
        }
        (output_dir / "best_of_n.json").write_text(json.dumps(report, indent=2))
        typer.echo(
            f"wrote the best of {best_of} candidates for {len(paths)} prompts to {output_dir} "
            "(every candidate's scores and seed: best_of_n.json)"
        )
        return
    typer.echo(f"wrote {len(paths)} {'videos' if media.ndim == 5 else 'images'} to {output_dir}")


@app.command()
def plugins(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="only these components, with their options (e.g. nft, flow-sde, trainer, "
            "evaluation)",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
    options: Annotated[
        bool,
        typer.Option("--options", help="print every component's config fields, and the core's"),
    ] = False,
) -> None:
    """List installed plugins, what they register, and whether they loaded."""
    from dance.config import describe
    from dance.registry import get_registry
    from dance.training.evaluation import EvaluationConfig
    from dance.training.trainer_config import TrainerConfig

    registry = get_registry()
    core_tables = {"trainer": TrainerConfig, "evaluation": EvaluationConfig}
    wanted = set(names or [])
    options = options or bool(wanted)
    known = {name for info in registry.plugins.values() for _, name in info.components}
    unknown = sorted(wanted - known - set(core_tables))
    if unknown:
        from dance.errors import did_you_mean

        hint = did_you_mean(unknown[0], sorted(known | set(core_tables)))
        raise UsageError(
            f"no installed component or core table is called '{unknown[0]}'.{hint} "
            "(`dance plugins` lists the components)"
        )

    def fields(config_class: type) -> list[dict[str, Any]]:
        return [
            {"name": f.name, "type": f.type, "default": f.default, "help": f.help}
            for f in describe(config_class)
        ]

    rows = []
    for info in sorted(registry.plugins.values(), key=lambda p: p.name):
        comps = []
        for kind, name in info.components:
            if wanted and name not in wanted:
                continue
            entry: dict[str, Any] = {"kind": kind, "name": name}
            cls = registry.components[kind][name].cls
            if kind == "objective":  # what it trains on, and with which samplers
                entry["note"] = f"  (keeps {cls.keeps}; {cls.sampler_requirement})"
            if options:
                entry["options"] = fields(cls.config_class)
            comps.append(entry)
        if wanted and not comps:
            continue
        rows.append(
            {
                "name": info.name,
                "distribution": info.distribution,
                "version": info.version,
                "loaded": info.loaded,
                "error": info.error,
                "registers": comps,
            }
        )
    tables = {
        table: fields(cls)
        for table, cls in core_tables.items()
        if options and (not wanted or table in wanted)
    }
    if as_json:  # the plugins only: the core's tables are not plugins
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        dist = f"{row['distribution']} {row['version']}" if row["distribution"] else "(no dist)"
        status = "loaded" if row["loaded"] else f"FAILED: {row['error']}"
        typer.echo(f"{row['name']}  [{dist}]  {status}")
        for comp in row["registers"]:
            typer.echo(f"    {comp['kind']:<9} {comp['name']}{comp.get('note', '')}")
            _echo_options(comp.get("options", []))
    if tables:
        typer.echo("core  (its tables of a recipe)")
        for table, opts in tables.items():
            typer.echo(f"    table     [{table}]")
            _echo_options(opts)


def _echo_options(options: list[dict[str, Any]]) -> None:
    for opt in options:
        typer.echo(f"        {opt['name']} ({opt['type']}) = {opt['default']!r}: {opt['help']}")


def _describe_os_error(exc: OSError) -> str:
    """One line naming the path and the cause of an OS error; a full disk says so in words."""
    import errno

    from dance.files import first_line

    path = exc.filename if exc.filename is not None else "a file"
    cause = exc.strerror or first_line(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full: cannot write {path} ({cause}); free some space and run again."
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied: cannot write or read {path} ({cause})."
    return f"{path}: {cause}"


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line and exit code 2 for usage errors, no traceback."""
    try:
        code = _run_app(argv)
    except Exception:  # a bug, not a user's mistake: its traceback, then the same exit path
        if not _joined_a_group():
            raise
        traceback.print_exc()
        code = 1
    _end(code)


def _run_app(argv: list[str] | None) -> int:
    """Run the command; the exit status, after one line on stderr for an error."""
    try:
        code = app(args=argv, standalone_mode=False)
        return code if isinstance(code, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except _ClickUsageError as exc:
        hint = f" (see `dance {exc.ctx.info_name} --help`)" if exc.ctx else ""
        typer.echo(f"error: {exc.format_message()}{hint}", err=True)
        return 2
    except UsageError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except RunError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
    except OSError as exc:  # a full disk, a permission denied, an I/O error: not the user's typo
        typer.echo(f"error: {_describe_os_error(exc)}", err=True)
        return 1
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130


def _joined_a_group() -> bool:
    distributed = sys.modules.get("dance.distributed")  # not imported: no group was joined
    return distributed is not None and distributed.joined_a_group()


def _end(code: int) -> None:
    """Exit with ``code``; a rank of a job of several processes ends through
    :func:`dance.distributed.end_process` (why is said there)."""
    distributed = sys.modules.get("dance.distributed")
    if distributed is not None:
        distributed.end_process(code)  # sys.exit for a single process
    sys.exit(code)


if __name__ == "__main__":
    main()
