"""docs/plugins.md's reward example is the installable fixture, and passes the contract test the
page shows, run exactly as written there; its logger and lifecycle-hook example is the other
fixture, and does what the page says in a run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "plugins.md"
FIXTURE = ROOT / "tests" / "fixtures" / "example_plugin"
LOGGER_FIXTURE = ROOT / "tests" / "fixtures" / "example_logger"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", PAGE.read_text(), re.S | re.M)


def _code(module: Path) -> str:
    """The source of ``module`` without its module docstring."""
    return re.sub(r'^""".*?"""\n\n', "", module.read_text(), flags=re.S)


def test_the_page_shows_the_fixture_plugin_exactly():
    code = _code(FIXTURE / "dance_example_plugin" / "__init__.py")
    assert code in python_blocks(), "docs/plugins.md and the example plugin differ"


def test_the_page_shows_the_tested_objective_exactly():
    code = _code(ROOT / "tests" / "objectives" / "weighted_flow_matching.py")
    assert code in python_blocks(), "docs/plugins.md and the tested objective differ"


def test_the_page_shows_the_logger_example_exactly():
    code = _code(LOGGER_FIXTURE / "dance_example_logger" / "__init__.py")
    assert code in python_blocks(), "docs/plugins.md and the example logger differ"


def test_the_logger_example_prints_and_records_checkpoints(tmp_path, capsys, monkeypatch):
    import dance
    from dance.cli.recipe import resolve
    from dance.registry import load_registry
    from dance.testing import toy_policy
    from dance.testing.toy_policy import toy_recipe
    from dance.training.trainer import Trainer

    monkeypatch.syspath_prepend(str(LOGGER_FIXTURE))
    import dance_example_logger

    # Only what the run needs from the installed plugins: an installation of the example (the
    # docs test makes one) must not register it a second time.
    monkeypatch.setenv("DANCE_PLUGINS", "advantages,objectives,loggers,flow-samplers,jpeg")
    registry = load_registry(extra={"toy": toy_policy, "example-logger": dance_example_logger})
    raw = toy_recipe(iterations=2, checkpoint_every=1, loggers=["jsonl", "print"])
    raw["loggers"] = {"print": {"keys": ["loss", "lr"]}}
    Trainer(resolve(raw, registry), tmp_path, dance.Runtime(), registry).run()
    printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[it")]
    assert [re.sub(r"[-\d.e]+$|[-\d.e]+(?=  )", "N", line) for line in printed] == [
        "[iteration 0] loss N  lr N",
        "[iteration 1] loss N  lr N",
    ]
    assert (tmp_path / "checkpoints.txt").read_text() == "1 iter-000001\n2 iter-000002\n"


def test_the_pages_contract_test_passes_on_the_example(tmp_path: Path):
    (contract,) = [b for b in python_blocks() if "RewardContract)" in b]
    test_file = tmp_path / "test_brightness.py"
    test_file.write_text(contract)
    env = dict(os.environ, PYTHONPATH=str(FIXTURE), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.search(r"\d+ passed", result.stdout) and "failed" not in result.stdout
