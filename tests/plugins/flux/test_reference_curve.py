"""The demo's held-out curve against the committed reference (tests/fixtures/reference_curves).

A shortened demo run (16 iterations, held-out set every 4) must stay inside the committed band
at every evaluated iteration. When a change moves it on purpose, regenerate the fixture with
``tests/fixtures/reference_curves/regenerate.py`` and say why in the commit.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dance.cli.app import main
from dance.registry import reset_registry

FOLDER = Path(__file__).parents[2] / "fixtures" / "reference_curves"


def _regenerate_module():
    spec = importlib.util.spec_from_file_location("regenerate", FOLDER / "regenerate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


regenerate = _regenerate_module()
FIXTURE = json.loads((FOLDER / "demo.json").read_text())


def test_fixture_matches_the_script_that_made_it():
    assert FIXTURE["overrides"] == regenerate.OVERRIDES
    assert FIXTURE["tolerance"] == regenerate.TOLERANCE
    assert [p["iteration"] for p in FIXTURE["curve"]] == [0, 4, 8, 12, 16]
    # The band was checked when the fixture was made: noise inside, real changes outside.
    kinds = {name: m["kind"] for name, m in FIXTURE["measured"].items()}
    assert "noise" in kinds.values() and "wrong" in kinds.values()
    for name, m in FIXTURE["measured"].items():
        assert m["inside_band"] == (m["kind"] == "noise"), name
        assert m["inside_band"] == (
            not regenerate.outside_band(m["curve"], FIXTURE["curve"], FIXTURE["tolerance"])
        )


def test_outside_band_names_each_point_that_left_it():
    reference = [{"iteration": 4, "reward_mean": 0.5, "success_rate": 0.25}]
    band = {"reward_mean": 0.03, "success_rate": 0.09}
    assert regenerate.outside_band(reference, reference, band) == []
    near = [{"iteration": 4, "reward_mean": 0.52, "success_rate": 0.33}]
    assert regenerate.outside_band(near, reference, band) == []
    far = [{"iteration": 4, "reward_mean": 0.45, "success_rate": 0.25}]
    (problem,) = regenerate.outside_band(far, reference, band)
    assert problem.startswith("iteration 4: reward_mean") and "-0.0500" in problem
    assert regenerate.outside_band([], reference, band) == ["iteration 4: no held-out evaluation"]


@pytest.mark.slow
def test_shortened_demo_stays_inside_the_reference_band(tmp_path):
    # About 55 s of CPU: 16 demo iterations and 5 evaluations of 24 held-out images.
    reset_registry()
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exc:
        main(["run", "--no-progress", "--output-dir", str(out), *FIXTURE["overrides"]])
    assert exc.value.code == 0
    curve = regenerate.curve_of(json.loads((out / "summary.json").read_text()))
    problems = regenerate.outside_band(curve, FIXTURE["curve"], FIXTURE["tolerance"])
    assert not problems, (
        "the shortened demo left the reference band (tests/fixtures/reference_curves):\n"
        + "\n".join(problems)
    )
