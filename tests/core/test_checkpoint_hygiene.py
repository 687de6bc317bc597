"""Checkpoints that were cut short, broken or corrupted: what a resume does with them (toy policy,
one process; the sharded format is covered by tests/distributed and the tiny FLUX test below)."""

from __future__ import annotations

import errno
import logging

import pytest
import torch

import dance
from dance.cli.recipe import resolve
from dance.errors import CheckpointError
from dance.registry import load_registry
from dance.testing import toy_policy
from dance.training.trainer import Trainer


@pytest.fixture(scope="module")
def registry():
    return load_registry(extra={"toy": toy_policy})


def make_trainer(registry, run_dir, iterations=2):
    raw = {
        "policy": {"name": "toy-flow"},
        "sampler": {"name": "dance-sde", "num_steps": 4},
        "rewards": [{"name": "jpeg-incompressibility"}],
        "trainer": {
            "iterations": iterations,
            "prompts_per_iteration": 2,
            "group_size": 2,
            "learning_rate": 1e-2,
            "sample_every": 0,
            "checkpoint_every": 1,
            "keep_checkpoints": 3,
        },
    }
    return Trainer(resolve(raw, registry), run_dir, dance.Runtime(), registry)


@pytest.fixture
def run_dir(registry, tmp_path):
    """A run with checkpoints iter-000001 and iter-000002 (latest)."""
    make_trainer(registry, tmp_path).run()
    return tmp_path


def test_stale_temporary_checkpoints_are_removed_at_start(registry, run_dir):
    stale = run_dir / "checkpoints" / ".tmp-iter-000003"
    stale.mkdir()
    (stale / "trainer_state.pt").write_bytes(b"half")
    make_trainer(registry, run_dir, iterations=3)
    assert not stale.exists()


def test_a_broken_latest_falls_back_to_the_newest_intact_checkpoint(registry, run_dir, caplog):
    root = run_dir / "checkpoints"
    (root / "iter-000002" / "trainer_state.pt").unlink()  # the newest is incomplete
    trainer = make_trainer(registry, run_dir, iterations=3)
    with caplog.at_level(logging.WARNING, logger="dance.training.checkpoint"):
        assert trainer.resume() == 1
    (line,) = [r.getMessage() for r in caplog.records if r.name == "dance.training.checkpoint"]
    assert "iter-000002" in line and "iter-000001" in line and "newest intact" in line

    (root / "latest").write_text("iter-000099")  # names nothing at all
    assert make_trainer(registry, run_dir, iterations=3).resume() == 1


def test_no_intact_checkpoint_left_is_one_line(registry, run_dir):
    for name in ("iter-000001", "iter-000002"):
        (run_dir / "checkpoints" / name / "trainer_state.pt").unlink()
    with pytest.raises(CheckpointError, match="no intact iter-\\* checkpoint"):
        make_trainer(registry, run_dir, iterations=3).resume()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "pickle"])
def test_a_corrupt_trainer_state_names_the_file_and_never_advises_unsafe_loading(
    registry, run_dir, damage
):
    state = run_dir / "checkpoints" / "iter-000002" / "trainer_state.pt"
    data = state.read_bytes()
    if damage == "truncate":
        state.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        state.write_bytes(bytes(range(256)) * 8)
    else:  # a pickle that weights_only refuses (it would run code)
        import pickle

        state.write_bytes(pickle.dumps({"iteration": 2, "fn": print}))
    with pytest.raises(CheckpointError) as exc:
        make_trainer(registry, run_dir, iterations=3).resume()
    message = str(exc.value)
    assert str(state) in message and "\n" not in message
    assert "weights_only" not in message


def test_weights_with_nan_are_refused_at_resume(registry, tmp_path):
    trainer = make_trainer(registry, tmp_path, iterations=1)
    trainer.run()
    with torch.no_grad():
        trainer.policy.lora_a[0, 0] = float("nan")
    trainer.save()
    with pytest.raises(CheckpointError, match="NaN or inf"):
        make_trainer(registry, tmp_path, iterations=3).resume()


def test_a_full_disk_says_so_and_leaves_no_partial_checkpoint(registry, run_dir, monkeypatch):
    trainer = make_trainer(registry, run_dir, iterations=3)
    trainer.resume()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("dance.training.checkpoint.torch.save", no_space)
    trainer.iteration_done = 3
    with pytest.raises(CheckpointError, match="the disk is full") as exc:
        trainer.save()
    assert "\n" not in str(exc.value)
    root = run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["iter-000001", "iter-000002", "latest"]
    assert (root / "latest").read_text() == "iter-000002"
