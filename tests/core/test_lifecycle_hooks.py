"""Lifecycle hooks: a plugin defined here sees after_evaluation, after_iteration and
after_checkpoint in the order a run makes them, next to its logger's calls; a hook that raises
stops the run with one line naming the plugin (every rank, when there are several); hooks run on
rank 0 only."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import dance
import dance.cli
import dance.distributed as dist
import dance.registry
from dance.cli.recipe import resolve
from dance.interfaces import Logger
from dance.registry import PluginHookError, load_registry
from dance.testing import toy_policy
from dance.testing.multiprocess import launch
from dance.testing.toy_policy import toy_recipe
from dance.training.trainer import Trainer

EVENTS: list[tuple] = []  # every hook and logger call, in order


@dataclass
class _NoOptions:
    pass


class _EventLogger(Logger):
    name = "events"
    config_class = _NoOptions

    def start(self, run):
        EVENTS.append(("logger.start", run.start))

    def log(self, iteration, metrics):
        EVENTS.append(("logger.log", iteration))

    def close(self):
        EVENTS.append(("logger.close",))


class _Watcher:
    """A plugin object: registers a logger and implements every lifecycle hook."""

    @dance.hookimpl
    def register_loggers(self, register):
        register(_EventLogger)

    @dance.hookimpl
    def after_iteration(self, iteration, metrics, output_dir):
        # The iteration's line is already in metrics.jsonl when the hook runs.
        lines = (output_dir / "metrics.jsonl").read_text().splitlines()
        assert json.loads(lines[-1])["iteration"] == iteration
        EVENTS.append(("after_iteration", iteration, metrics["time/iteration"] > 0))

    @dance.hookimpl
    def after_checkpoint(self, path, iteration):
        assert (path.parent / "latest").read_text() == path.name  # complete and current
        EVENTS.append(("after_checkpoint", path.name, iteration))

    @dance.hookimpl
    def after_evaluation(self, stage, figures, output_dir):
        saved = json.loads((output_dir / "eval" / f"{stage}.json").read_text())
        assert saved == json.loads(json.dumps(figures))
        EVENTS.append(("after_evaluation", stage, "reward_mean" in figures))


class _OnlyPath:
    """Declares a subset of the spec's arguments, as pluggy allows."""

    @dance.hookimpl
    def after_checkpoint(self, path):
        EVENTS.append(("only-path", path.name))


class _Boom:
    @dance.hookimpl
    def after_iteration(self, iteration):
        if iteration == 1:
            raise ValueError("cannot reach the sweep server")


def _raw(iterations: int, evaluation: bool, loggers: list[str]) -> dict:
    raw = toy_recipe(iterations=iterations, checkpoint_every=1, loggers=loggers)
    if evaluation:
        raw["evaluation"] = {"prompts": "pkg:dance/data/prompts.txt", "seeds": 1, "num_steps": 2}
    return raw


def _run(plugins: dict, out: Path, iterations: int = 2, evaluation: bool = False) -> dict:
    EVENTS.clear()
    registry = load_registry(extra={"toy": toy_policy, **plugins})
    loggers = ["jsonl", "events"] if "events" in registry.names("logger") else ["jsonl"]
    recipe = resolve(_raw(iterations, evaluation, loggers), registry)
    return Trainer(recipe, out, dance.Runtime(), registry).run()


def test_hooks_and_logger_calls_come_in_the_order_of_the_run(tmp_path):
    _run({"watcher": _Watcher(), "only-path": _OnlyPath()}, tmp_path, evaluation=True)
    assert EVENTS == [
        ("after_evaluation", "before", True),
        ("logger.start", 0),
        ("logger.log", 0),
        ("after_iteration", 0, True),
        ("only-path", "iter-000001"),  # registered last: called first, as pluggy does
        ("after_checkpoint", "iter-000001", 1),
        ("logger.log", 1),
        ("after_iteration", 1, True),
        ("only-path", "iter-000002"),
        ("after_checkpoint", "iter-000002", 2),
        ("logger.close",),
        ("after_evaluation", "after", True),
    ]


def test_a_raising_hook_stops_the_run_with_one_line_naming_the_plugin(tmp_path):
    with pytest.raises(PluginHookError) as exc:
        _run({"watcher": _Watcher(), "boom": _Boom()}, tmp_path, iterations=4)
    assert str(exc.value) == (
        "plugin 'boom' failed in its after_iteration hook: ValueError: cannot reach the sweep "
        "server"
    )
    # Stopped right there: no checkpoint of iteration 1's weights, the logger closed.
    assert EVENTS[-2:] == [("logger.log", 1), ("logger.close",)]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "iter-000001"


def test_through_the_cli_a_raising_hook_is_exit_1_and_one_line(tmp_path, monkeypatch, capsys):
    registry = load_registry(extra={"toy": toy_policy, "boom": _Boom()})
    monkeypatch.setattr(dance.registry, "_REGISTRY", registry)
    args = ["run", "--policy", "toy-flow", "--reward", "jpeg-compressibility", "--no-progress"]
    args += ["--output-dir", str(tmp_path / "run"), "trainer.iterations=3"]
    args += ["trainer.group_size=2", "trainer.prompts_per_iteration=1", "sampler.num_steps=2"]
    with pytest.raises(SystemExit) as exc:
        dance.cli.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 1
    assert err == (
        "error: plugin 'boom' failed in its after_iteration hook: ValueError: cannot reach the "
        "sweep server\n"
    )


def test_a_misspelt_hook_fails_the_plugin_with_a_suggestion(tmp_path):
    class Misspelt:
        @dance.hookimpl
        def after_iterations(self, iteration):
            EVENTS.append(("misspelt", iteration))

    registry = load_registry(extra={"misspelt": Misspelt()})
    info = registry.plugins["misspelt"]
    assert not info.loaded
    assert info.error == (
        "implements 'after_iterations', which is not a dance hook. Did you mean 'after_iteration'?"
    )


def test_a_hook_wrapper_is_refused_by_name(tmp_path):
    class Wrapper:
        @dance.hookimpl(wrapper=True)
        def after_checkpoint(self, path):
            return (yield)

    with pytest.raises(PluginHookError, match="plugin 'wrapper' implements after_checkpoint as"):
        _run({"wrapper": Wrapper()}, tmp_path, iterations=1)


def test_a_plugin_that_failed_to_load_takes_no_part(tmp_path):
    class Broken:
        @dance.hookimpl
        def register_rewards(self, register):
            raise ImportError("its reward model is missing")

        @dance.hookimpl
        def after_iteration(self, iteration):
            EVENTS.append(("broken", iteration))

    _run({"broken": Broken()}, tmp_path, iterations=1)
    assert not [e for e in EVENTS if e[0] == "broken"]


# --- two ranks: hooks on rank 0 only, and a failing hook stops both ------------------------------


class _RankRecorder:
    @dance.hookimpl
    def after_iteration(self, iteration, output_dir):
        with open(output_dir / f"hook-rank{dist.rank()}.txt", "a") as f:
            f.write(f"{iteration}\n")
        if iteration == int(os.environ.get("DANCE_TEST_FAIL_AT", "-1")):
            raise ValueError(f"hook failed at iteration {iteration}")


def cli_main(argv: list[str]) -> None:
    dance.registry._REGISTRY = load_registry(extra={"toy": toy_policy, "ranks": _RankRecorder()})
    dance.cli.main(argv)


def _two_ranks(out: Path, fail_at: int) -> list:
    args = ["run", "--policy", "toy-flow", "--reward", "jpeg-compressibility", "--no-progress"]
    args += ["--output-dir", str(out), "trainer.iterations=3", "trainer.group_size=2"]
    args += ["trainer.prompts_per_iteration=1", "sampler.num_steps=2", "trainer.sample_every=0"]
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import {Path(__file__).stem} as t; t.cli_main({args!r})"
    )
    env = {"DANCE_TEST_FAIL_AT": str(fail_at)}
    return launch([sys.executable, "-c", code], 2, env=env, timeout=300)


@pytest.mark.skipif(sys.platform == "win32", reason="gloo")
def test_two_ranks_hooks_run_on_rank_0_only_and_a_failure_stops_both(tmp_path):
    outcomes = _two_ranks(tmp_path, fail_at=1)
    for o in outcomes:
        assert o.returncode == 1, (o.rank, o.stderr[-2000:])
        assert "Traceback" not in o.stderr
        assert (
            "plugin 'ranks' failed in its after_iteration hook: ValueError: hook failed at "
            "iteration 1" in o.stderr
        ), o.stderr[-2000:]
    assert "rank 0 failed during logging" in outcomes[1].stderr
    assert (tmp_path / "hook-rank0.txt").read_text() == "0\n1\n"  # once per iteration, rank 0
    assert not (tmp_path / "hook-rank1.txt").exists()
