"""Loggers are plugins: a third-party logger defined here receives start / log / close in order
next to the built-in jsonl and tensorboard ones, chosen with trainer.loggers and configured by a
[loggers.NAME] table; bad names and options are one line with exit code 2."""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

import dance
import dance.registry
from dance.cli.app import main
from dance.cli.recipe import apply_override, parse_toml, resolve
from dance.config import option
from dance.errors import ConfigError, RunError, UsageError
from dance.interfaces import Logger
from dance.registry import load_registry
from dance.reporting.tensorboard import event_step, read_records
from dance.testing import toy_policy
from dance.testing.toy_policy import toy_recipe
from dance.training.run_config import dumps_toml
from dance.training.trainer import Trainer

CALLS: list[tuple] = []  # what every _Recorder saw, in order


@dataclass
class _RecorderConfig:
    label: str = option("rec", "a word stored with every call, to see the option arrive")
    fail_in: str = option("", "method that raises: start, log or close; empty = none")


class _Recorder(Logger):
    name = "recorder"
    config_class = _RecorderConfig

    def _maybe_fail(self, method: str) -> None:
        if self.config.fail_in == method:
            raise ConnectionError("dashboard unreachable")

    def start(self, run):
        super().start(run)
        CALLS.append(("start", self.config.label, run.start, run.iterations, run.config))
        self._maybe_fail("start")

    def log(self, iteration, metrics):
        CALLS.append(("log", iteration, dict(metrics)))
        self._maybe_fail("log")

    def close(self):
        CALLS.append(("close",))
        self._maybe_fail("close")


_plugin = types.SimpleNamespace(
    register_loggers=dance.hookimpl(lambda register: register(_Recorder))
)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch):
    CALLS.clear()
    registry = load_registry(extra={"toy": toy_policy, "recorder-plugin": _plugin})
    monkeypatch.setattr(dance.registry, "_REGISTRY", registry)
    return registry


def _raw(iterations: int, loggers: list[str], tables: dict | None = None) -> dict:
    raw = toy_recipe(iterations=iterations, checkpoint_every=2, loggers=loggers)
    return {**raw, "loggers": tables or {}}


def _trainer(registry, out: Path, iterations: int, loggers: list[str], tables=None) -> Trainer:
    return Trainer(
        resolve(_raw(iterations, loggers, tables), registry), out, dance.Runtime(), registry
    )


def _jsonl(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _tensorboard_steps(out: Path) -> list[int]:
    steps = []
    for path in sorted((out / "tensorboard").iterdir()):
        for record in read_records(path):
            step, has_summary = event_step(record)
            if has_summary and b"time/iteration" in record:
                steps.append(step)
    return sorted(steps)


def test_a_plugin_logger_gets_start_log_close_in_order_and_on_resume(registry, tmp_path):
    loggers = ["jsonl", "tensorboard", "recorder"]
    tables = {"recorder": {"label": "mine"}}
    _trainer(registry, tmp_path, 2, loggers, tables).run()
    assert [c[0] for c in CALLS] == ["start", "log", "log", "close"]
    _, label, start, iterations, config = CALLS[0]
    assert (label, start, iterations) == ("mine", 0, 2)
    assert config["trainer"]["loggers"] == loggers
    assert config["loggers"] == {"recorder": {"label": "mine", "fail_in": ""}}
    # The same figures as metrics.jsonl, which the jsonl logger still writes as before.
    lines = _jsonl(tmp_path)
    assert [(c[1], c[2]) for c in CALLS[1:3]] == [(x.pop("iteration"), x) for x in lines]
    assert _tensorboard_steps(tmp_path) == [0, 1]

    CALLS.clear()
    _trainer(registry, tmp_path, 3, loggers, tables).run(resume=True)
    assert [c[:3] if c[0] == "start" else c[:2] for c in CALLS] == [
        ("start", "mine", 2),
        ("log", 2),
        ("close",),
    ]
    assert [x["iteration"] for x in _jsonl(tmp_path)] == [0, 1, 2]
    assert _tensorboard_steps(tmp_path) == [0, 1, 2]


def test_default_loggers_are_todays_files(registry, tmp_path):
    raw = _raw(1, [])
    del raw["trainer"]["loggers"]
    recipe = resolve(raw, registry)
    assert recipe.trainer.loggers == ["jsonl", "tensorboard"]
    Trainer(recipe, tmp_path, dance.Runtime(), registry).run()
    assert [x["iteration"] for x in _jsonl(tmp_path)] == [0]
    assert _tensorboard_steps(tmp_path) == [0]
    assert "loggers" not in parse_toml((tmp_path / "config.toml").read_text(), "config")


def test_without_tensorboard_no_events_are_written(registry, tmp_path):
    _trainer(registry, tmp_path, 1, ["jsonl"]).run()
    assert not (tmp_path / "tensorboard").exists()
    assert len(_jsonl(tmp_path)) == 1


@pytest.mark.parametrize("method", ["start", "log", "close"])
def test_a_failing_logger_stops_the_run_naming_it_and_is_still_closed(registry, tmp_path, method):
    trainer = _trainer(
        registry, tmp_path, 2, ["jsonl", "recorder"], {"recorder": {"fail_in": method}}
    )
    with pytest.raises(RunError) as exc:
        trainer.run()
    message = str(exc.value)
    assert message == (
        f"logger 'recorder' failed in {method}(): ConnectionError: dashboard unreachable"
    )
    assert [c[0] for c in CALLS].count("close") == 1  # closed once, also after a failure
    if method == "log":  # stopped at the first iteration: the loggers before it have its line
        assert [c[0] for c in CALLS] == ["start", "log", "close"]
        assert [x["iteration"] for x in _jsonl(tmp_path)] == [0]


def test_resolved_config_keeps_the_logger_options_and_loads_again(registry, tmp_path):
    raw = _raw(1, ["jsonl", "recorder"], {"recorder": {"label": "x"}})
    apply_override(raw, "loggers.recorder.label=from-the-command-line")
    recipe = resolve(raw, registry)
    assert recipe.loggers == {
        "jsonl": {},
        "recorder": {"label": "from-the-command-line", "fail_in": ""},
    }
    text = dumps_toml(recipe.to_toml_dict())
    again = resolve(parse_toml(text, "config.toml"), registry)
    assert again.loggers == recipe.loggers and again.trainer.loggers == ["jsonl", "recorder"]


def test_a_table_of_an_unlisted_logger_is_not_used_and_said_so(registry, capsys):
    recipe = resolve(_raw(1, ["jsonl"], {"recorder": {"label": "x"}}), registry)
    assert recipe.loggers == {"jsonl": {}}
    err = capsys.readouterr().err
    assert "[loggers.recorder] is set but trainer.loggers (jsonl) does not list 'recorder'" in err


@pytest.mark.parametrize(
    "loggers, tables, fragments",
    [
        (
            ["jsonl", "tensorbord"],
            {},
            ["trainer.loggers", "unknown logger 'tensorbord'", "Did you mean 'tensorboard'?"],
        ),
        (
            ["tensorboard"],
            {},
            ["trainer.loggers must include 'jsonl'", "trainer.loggers=jsonl,tensorboard"],
        ),
        (["jsonl", "jsonl"], {}, ["trainer.loggers names 'jsonl' twice"]),
        (
            ["jsonl", "recorder"],
            {"recorder": {"lable": "x"}},
            ["loggers.recorder.lable", "Did you mean 'label'?"],
        ),
        (["jsonl"], {"recorder": 3}, ["'loggers.recorder' must be a table"]),
    ],
)
def test_bad_logger_choices_are_one_line_exit_2(
    registry, tmp_path, capsys, loggers, tables, fragments
):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(dumps_toml(_raw(1, loggers, tables)))
    with pytest.raises(SystemExit) as exc:
        main(["run", "--recipe", str(recipe), "--no-progress", "--output-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_logger_override_needs_a_name_and_a_field():
    with pytest.raises(UsageError, match=r"use loggers\.NAME\.field=value"):
        apply_override({}, "loggers.wandb=offline")


def test_a_logger_option_out_of_range_names_the_field(registry):
    with pytest.raises(ConfigError, match="loggers.recorder.label: expected a string"):
        resolve(_raw(1, ["jsonl", "recorder"], {"recorder": {"label": [1]}}), registry)


def test_dance_plugins_lists_the_loggers(registry, capsys):
    with pytest.raises(SystemExit):
        main(["plugins", "--options"])
    out = capsys.readouterr().out
    for name in ("jsonl", "tensorboard", "recorder"):
        assert f"logger    {name}" in out
    assert "label (str) = 'rec': a word stored with every call" in out
