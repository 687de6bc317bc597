"""CPU threads: --threads, then OMP_NUM_THREADS, then half the CPUs for CPU runs."""

from __future__ import annotations

import pytest
import torch

import dance.cli.threads
import dance.registry
from dance.cli.threads import choose_threads, use_threads
from dance.errors import UsageError
from dance.registry import load_registry
from dance.testing import toy_policy
from dance.testing.cli_runner import run_cli

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


def test_precedence(monkeypatch):
    monkeypatch.setattr(dance.cli.threads, "available_cpus", lambda: 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(5, CPU) == (5, "--threads")
    assert choose_threads(None, CPU) == (3, "OMP_NUM_THREADS")
    assert choose_threads(None, GPU) == (3, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert choose_threads(None, CPU)[0] == 4  # half of 8
    assert choose_threads(None, GPU)[0] is None  # torch's default
    monkeypatch.setattr(dance.cli.threads, "available_cpus", lambda: 1)
    assert choose_threads(None, CPU)[0] == 1


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_environment_value_is_a_usage_error(monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    with pytest.raises(UsageError, match="OMP_NUM_THREADS"):
        choose_threads(None, CPU)


def test_use_threads_sets_torch(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(dance.cli.threads, "available_cpus", lambda: 2)
    assert use_threads(None, CPU) == "1 CPU thread (default for CPU runs: half the CPUs)"
    assert torch.get_num_threads() == 1
    assert use_threads(2, CPU) == "2 CPU threads (--threads)"
    assert torch.get_num_threads() == 2


def test_threads_option_of_run_and_sample(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(dance.registry, "_REGISTRY", load_registry(extra={"toy": toy_policy}))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    run = ["run", "--policy", "toy-flow", "--reward", "jpeg-compressibility", "--no-progress"]
    run += ["--device", "cpu"]
    run += ["--output-dir", str(tmp_path / "r"), "trainer.iterations=1", "trainer.group_size=2"]
    run += ["trainer.prompts_per_iteration=1", "sampler.num_steps=3", "trainer.sample_every=0"]
    code, out, err = run_cli([*run, "--threads", "2"], capsys)
    assert code == 0, err
    assert "device: cpu, 2 CPU threads (--threads)" in out
    assert torch.get_num_threads() == 2
    sample = ["sample", "--policy", "toy-flow", "--prompt", "a cat", "--device", "cpu"]
    sample += ["--output-dir", str(tmp_path / "s"), "--threads", "1"]
    assert run_cli(sample, capsys)[0] == 0
    assert torch.get_num_threads() == 1
    code, _, err = run_cli([*run, "--threads", "0"], capsys)
    assert code == 2 and "--threads" in err
