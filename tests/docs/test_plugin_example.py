"""docs/plugins.md's reward example is the installable fixture, and passes the contract test the
page shows, run exactly as written there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "plugins.md"
FIXTURE = ROOT / "tests" / "fixtures" / "example_plugin"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", PAGE.read_text(), re.S | re.M)


def test_the_page_shows_the_fixture_plugin_exactly():
    source = (FIXTURE / "dance_example_plugin" / "__init__.py").read_text()
    code = re.sub(r'^""".*?"""\n\n', "", source, flags=re.S)  # without its module docstring
    assert code in python_blocks(), "docs/plugins.md and the example plugin differ"


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
