"""benchmarks/objectives.py --quick: runs, skips what is not installed, writes its section only."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "objectives.py"


def load_script():
    spec = importlib.util.spec_from_file_location("objectives_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_its_section_and_skips_missing_plugins(tmp_path, monkeypatch):
    bench = load_script()
    demo = next(s for s in bench.SETTINGS if s.baseline)
    missing = bench.Setting("(z) missing objective", "demo", ["objective.name=no-such-objective"])
    monkeypatch.setattr(bench, "SETTINGS", [demo, missing])
    doc = tmp_path / "objectives.md"
    other = "## Another helper's section\n\nkept as it is\n"
    doc.write_text(f"# Objectives\n\n{bench.SECTION}\n\nstale text\n\n{other}")
    work = tmp_path / "work"
    assert bench.main(["--quick", "--budget", "1.5", "--doc", str(doc), "--work", str(work)]) == 0

    text = doc.read_text()
    assert text.count(bench.SECTION) == 1 and "stale text" not in text
    assert text.endswith(other)  # the other section untouched
    assert f"| {demo.label} | 1 |" in text
    assert "Skipped: (z) missing objective: unknown objective 'no-such-objective'" in text
    assert (tmp_path / "objectives_demo.png").is_file()

    (run,) = json.loads((work / "results.json").read_text())["runs"][demo.label]
    # Stopped once its training CPU reached the budget, after at most one more iteration.
    assert run["cpu_s"] >= 1.5 and run["iterations"] >= 1
    curve = run["curve"]
    assert curve[0]["iteration"] == 0 and curve[0]["cpu_s"] == 0.0
    assert [p["iteration"] for p in curve] == list(range(run["iterations"] + 1))  # every=1
    assert curve[-1]["cpu_s"] == run["cpu_s"]
    assert all(a["cpu_s"] < b["cpu_s"] for a, b in zip(curve, curve[1:], strict=False))
