"""`dance sample --best-of N`: candidates, the pick, the JSON report, regeneration, bad input."""

import json
import types
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

import dance
import dance.registry
from dance.config import option
from dance.registry import load_registry
from dance.testing import toy_policy
from dance.testing.cli_runner import run_cli


@dataclass
class _NoOptions:
    scale: float = option(1.0, "multiplier")


class _Brightness(dance.Reward):
    name = "brightness"
    config_class = _NoOptions
    components = ("value",)

    def score(self, media, prompts):
        return {"value": media.flatten(1).mean(dim=1) * self.config.scale}


class _Contrast(dance.Reward):
    name = "contrast"
    config_class = _NoOptions
    components = ("value",)

    def score(self, media, prompts):
        return {"value": media.flatten(1).std(dim=1) * self.config.scale}


class _VideoOnly(_Brightness):
    name = "video-only"
    modalities = ("video",)


_plugin = types.SimpleNamespace(
    register_rewards=dance.hookimpl(
        lambda register: [register(c) for c in (_Brightness, _Contrast, _VideoOnly)]
    )
)


@pytest.fixture
def registry(monkeypatch):
    registry = load_registry(extra={"toy": toy_policy, "test-rewards": _plugin})
    monkeypatch.setattr(dance.registry, "_REGISTRY", registry)
    return registry


SAMPLE = ["sample", "--policy", "toy-flow", "sampler.num_steps=3"]


def pixels(path):
    return np.asarray(Image.open(path)).astype(np.float64) / 255


def test_best_of_n_picks_the_best_candidate_and_reports_all(registry, tmp_path, capsys):
    out = tmp_path / "best"
    args = [*SAMPLE, "--prompt", "a cat", "--prompt", "a dog", "--best-of", "5", "--seed", "10"]
    args += ["--reward", "brightness", "--reward", "contrast:0.5", "--output-dir", str(out)]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert "best of 5 candidates for 2 prompts" in stdout
    report = json.loads((out / "best_of_n.json").read_text())
    assert report["best_of"] == 5 and [r["weight"] for r in report["rewards"]] == [1.0, 0.5]
    for i, entry in enumerate(report["prompts"]):
        seeds = [c["seed"] for c in entry["candidates"]]
        assert seeds == list(range(10 + 5 * i, 15 + 5 * i))
        for c in entry["candidates"]:  # the combined score is the weighted sum
            expected = c["rewards"]["brightness"] + 0.5 * c["rewards"]["contrast"]
            assert c["score"] == pytest.approx(expected, rel=1e-6)
        best = max(entry["candidates"], key=lambda c: c["score"])
        assert entry["chosen_seed"] == best["seed"] and entry["chosen_score"] == best["score"]

        # The written image is the chosen candidate: regenerate it from its seed alone.
        again = tmp_path / f"again{i}"
        prompt = entry["prompt"]
        regen = [*SAMPLE, "--prompt", prompt, "--seed", str(best["seed"])]
        assert run_cli([*regen, "--output-dir", str(again)], capsys)[0] == 0
        chosen = pixels(out / entry["file"])
        np.testing.assert_array_equal(chosen, pixels(next(again.glob("*.png"))))
        # and its brightness is the reported one (up to 8-bit rounding of the PNG)
        assert chosen.mean() == pytest.approx(best["rewards"]["brightness"], abs=3e-3)
    manifest = json.loads((out / "samples.json").read_text())
    assert [im["seed"] for im in manifest["images"]] == [
        p["chosen_seed"] for p in report["prompts"]
    ]


def test_best_of_one_is_plain_sampling(registry, tmp_path, capsys):
    best = [*SAMPLE, "--prompt", "a cat", "--best-of", "1", "--reward", "brightness"]
    assert run_cli([*best, "--output-dir", str(tmp_path / "a")], capsys)[0] == 0
    assert (
        run_cli([*SAMPLE, "--prompt", "a cat", "--output-dir", str(tmp_path / "b")], capsys)[0] == 0
    )
    a, b = next((tmp_path / "a").glob("*.png")), next((tmp_path / "b").glob("*.png"))
    np.testing.assert_array_equal(pixels(a), pixels(b))


def test_reward_options_pass_through_overrides(registry, tmp_path, capsys):
    args = [*SAMPLE, "--prompt", "a cat", "--best-of", "2", "--reward", "brightness"]
    args += ["rewards.brightness.scale=-1", "--output-dir", str(tmp_path)]
    assert run_cli(args, capsys)[0] == 0
    entry = json.loads((tmp_path / "best_of_n.json").read_text())["prompts"][0]
    # with a negative scale, the darkest candidate wins
    assert entry["chosen_score"] == max(c["score"] for c in entry["candidates"])
    assert all(c["score"] <= 0 for c in entry["candidates"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--best-of", "0", "--reward", "brightness"], "--best-of"),
        (["--best-of", "2"], "needs a reward"),
        (["--reward", "brightness"], "add --best-of"),
        (["--best-of", "2", "--reward", "brightness", "--num-per-prompt", "2"], "--num-per-prompt"),
        (["--best-of", "2", "--reward", "video-only"], "scores video, but policy 'toy-flow'"),
        (["--best-of", "2", "--reward", "brightnes"], "Did you mean 'brightness'"),
        (["--best-of", "2", "--reward", "brightness:x"], "is not a number"),
    ],
)
def test_bad_input_is_one_line_exit_2(registry, tmp_path, capsys, extra, message):
    args = [*SAMPLE, "--prompt", "a cat", "--output-dir", str(tmp_path), *extra]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
