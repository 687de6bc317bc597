"""The `dance` command: errors as one line with exit code 2, plugins listing, a toy run."""

import json

import pytest

import dance.registry
from dance.registry import load_registry
from dance.testing import toy_policy
from dance.testing.cli_runner import run_cli

BUILT_INS = {"advantages", "flow-samplers", "flux", "jpeg", "binary"}


@pytest.fixture
def toy_registry(monkeypatch):
    registry = load_registry(extra={"toy": toy_policy})
    monkeypatch.setattr(dance.registry, "_REGISTRY", registry)
    return registry


TOY = ["run", "--policy", "toy-flow", "--reward", "jpeg-compressibility", "--no-progress"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--policy", "flx", "--reward", "jpeg-compressibility"], "Did you mean 'flux'"),
        (["run", "--policy", "toy-flow", "--reward", "jpeg"], "unknown reward 'jpeg'"),
        ([*TOY, "trainer.group_size=1"], "group_size must be at least 2"),
        ([*TOY, "objective.timestep_fraction=0"], "timestep_fraction must be greater than 0"),
        ([*TOY, "objective.timestep_fraction=1.5"], "timestep_fraction must be at most 1"),
        ([*TOY, "trainer.learning_rate=-1e-5"], "learning_rate must be greater than 0"),
        ([*TOY, "trainer.lr=1e-5"], "unknown config field 'trainer.lr'"),
        ([*TOY, "trainer"], "section.field=value"),
        (["run", "--polcy", "flux"], "No such option"),
        (["run", "--policy", "toy-flow"], "no reward chosen"),
        (["run", "--recipe", "missing.toml"], "does not exist"),
        (["run", "--recipe", "no-such-recipe"], "unknown recipe"),
        (["sample", "--policy", "toy-flow"], "no prompt given"),
    ],
)
def test_usage_errors_are_one_line_exit_2(toy_registry, capsys, args, message):
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_malformed_recipe(toy_registry, capsys, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("[policy\nname = 'flux'")
    code, _, err = run_cli(["run", "--recipe", str(recipe)], capsys)
    assert code == 2 and "not valid TOML" in err


def test_plugins_json_lists_every_built_in(capsys):
    dance.registry.reset_registry()
    code, out, _ = run_cli(["plugins", "--json"], capsys)
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert set(rows) >= BUILT_INS
    for name in BUILT_INS:
        assert rows[name]["loaded"], rows[name]["error"]
        assert rows[name]["version"] and rows[name]["distribution"]
    registered = {(c["kind"], c["name"]) for row in rows.values() for c in row["registers"]}
    assert {
        ("policy", "flux"),
        ("sampler", "dance-sde"),
        ("sampler", "flow-sde"),
        ("reward", "jpeg-compressibility"),
        ("reward", "binary"),
        ("advantage", "group"),
    } <= registered


def test_plugins_options_print_fields(capsys):
    dance.registry.reset_registry()
    code, out, _ = run_cli(["plugins", "--options"], capsys)
    assert code == 0
    assert "eta (float) = 0.3" in out and "lora_rank (int) = 128" in out
    # ... and the core's own tables, which are not plugins
    assert "    table     [trainer]" in out and "    table     [evaluation]" in out
    assert "iterations (int) = 100" in out and "every (int) = 0" in out


def test_plugins_named_print_only_those_with_their_options(capsys):
    dance.registry.reset_registry()
    code, out, _ = run_cli(["plugins", "nft", "evaluation"], capsys)
    assert code == 0
    assert "objective nft" in out and "decay_rate (float) = 0.001" in out
    assert "every (int) = 0" in out
    assert "    objective grpo" not in out and "table     [trainer]" not in out
    assert "policy    flux" not in out
    code, _, err = run_cli(["plugins", "nfft"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "no installed component or core table is called 'nfft'" in err
    assert "Did you mean 'nft'?" in err


def test_toy_run_then_resume_then_sample(toy_registry, capsys, tmp_path):
    out_dir = tmp_path / "run"
    args = [*TOY, "--output-dir", str(out_dir), "trainer.iterations=1", "trainer.group_size=2"]
    args += ["trainer.prompts_per_iteration=2", "sampler.num_steps=3"]
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and "finished after 1 iterations" in out
    assert "summary.json" in out and "reward_curve.png" in out
    # the same directory again without --resume is refused rather than overwritten
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "--resume" in err
    resume = ["run", "--resume", "--no-progress", "--output-dir", str(out_dir)]
    code, out, err = run_cli([*resume, "trainer.iterations=2"], capsys)
    assert code == 0 and "after 2 iterations" in out
    # A changed setting is named once; config.toml records it.
    assert "note: resuming with changed settings: trainer.iterations 1 -> 2" in err
    assert "iterations = 2" in (out_dir / "config.toml").read_text()
    # Fewer iterations than the run has done: refused, and the record is left as it was.
    record = (out_dir / "config.toml").read_text()
    code, _, err = run_cli([*resume, "trainer.iterations=1"], capsys)
    assert code == 2 and "has done 2 iterations, more than trainer.iterations = 1" in err
    assert err.count("\n") == 2  # the note of the changed setting, and the error
    assert (out_dir / "config.toml").read_text() == record
    code, out, err = run_cli([*resume], capsys)  # nothing changed: no note
    assert code == 0 and "changed settings" not in err
    code, out, _ = run_cli(
        ["sample", "--lora", str(out_dir), "--prompt", "a cat", "--num-per-prompt", "2"]
        + ["--output-dir", str(tmp_path / "s")],
        capsys,
    )
    assert code == 0
    manifest = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert manifest["policy"] == "toy-flow" and len(manifest["images"]) == 2
    assert [img["seed"] for img in manifest["images"]] == [0, 1]


def test_plain_run_names_a_missing_demo_plugin(capsys, monkeypatch):
    # `dance run` alone trains the bundled demo, which declares the plugins it needs: without the
    # shapes reward's distribution it stops in one line naming it, before anything loads.
    from importlib import metadata

    real = metadata.distribution

    def without_shapes(name):
        if name == "dance-shapes":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr("dance.cli.recipe.metadata.distribution", without_shapes)
    code, out, err = run_cli(["run"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "bundled recipe 'demo' needs the plugin distribution " in lines[0]
    assert "dance-shapes, not installed" in lines[0]
