"""FSDP2 with two CPU processes (gloo), started from pytest with torchrun: sharding that shards
(measured), gradients summed over ranks, sharded checkpoints resumed at another number of
processes, a killed checkpoint write, and two simulated nodes running `dance run`.

The scenarios live in workers.py; a one-process side runs in this process, the same code."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import workers
from safetensors.torch import load_file

from dance.errors import CheckpointError

WORKERS = str(Path(__file__).with_name("workers.py"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def launch(nprocs: int, args: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run workers.py's train scenario on ``nprocs`` processes of one (simulated) node."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nprocs}", WORKERS, "train", json.dumps(args)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def ranks(out: Path, tag: str, world: int) -> list[dict]:
    return [json.loads((out / f"{tag}-rank{r}-of-{world}.json").read_text()) for r in range(world)]


def assert_equal_states(a: dict, b: dict) -> None:
    for part in ("weights", "optimizer"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert len(a["ema"]) == len(b["ema"])
    assert all(torch.equal(x, y) for x, y in zip(a["ema"], b["ema"], strict=True))


@pytest.mark.slow
def test_full_finetune_shards_sums_gradients_and_resumes_from_one_to_two_processes(
    tiny_flux, tmp_path
):
    out, run_dir = tmp_path / "out", tmp_path / "run"
    common = {
        "model": str(tiny_flux),
        "run_dir": str(run_dir),
        "out": str(out),
        "policy": {"finetune": "full", "gradient_checkpointing": True},
        "fixed_norm": True,
    }
    # One process (here): one iteration with EMA and the KL term (a frozen reference copy).
    trainer = {"iterations": 1, "ema_decay": 0.9}
    common["objective"] = {"kl_coef": 0.1}
    one = workers.train({**common, "tag": "one", "trainer": trainer})
    # Two processes resume it and run a second iteration.
    trainer = {**trainer, "iterations": 2}
    proc = launch(2, {**common, "tag": "two", "trainer": trainer, "resume": True})
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = ranks(out, "two", 2)

    # Sharded: every trainable weight is a DTensor and each rank holds about half of the
    # weights, gradients and AdamW states of one process (summed local shard bytes).
    for r in two:
        assert r["sharded"] and r["dtensor_params"] == r["params"] == one["params"]
        for key in ("param_bytes", "grad_bytes", "optimizer_bytes"):
            assert r[key] <= 0.55 * one[key], key
    for key in ("param_bytes", "grad_bytes", "optimizer_bytes"):
        assert sum(r[key] for r in two) == one[key], key  # shards partition the whole
    # Gradients are summed over ranks (divide factor 1) and the clipping norm is global: rows of
    # a fixed loss split over two ranks give the one-process norm of all rows.
    for r in two:
        assert r["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-6)

    # 1 -> 2 processes: weights, AdamW states and EMA resume exactly.
    saved_one = torch.load(out / "one-1.pt", weights_only=True)
    saved_two = torch.load(out / "two-2.pt", weights_only=True)
    assert_equal_states(saved_one["end"], saved_two["start"])
    assert two[0]["iterations"] == 2
    assert not torch.equal(
        next(iter(saved_two["start"]["weights"].values())),
        next(iter(saved_two["end"]["weights"].values())),
    )

    # The gathered export is the network's diffusers folder, written by rank 0.
    from diffusers import FluxTransformer2DModel

    folder = run_dir / "checkpoints" / "iter-000002"
    assert sorted(p.name for p in (folder / "sharded").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    exported = folder / "trained" / "transformer"
    assert json.loads((exported / "config.json").read_text())["_class_name"] == (
        "FluxTransformer2DModel"
    )
    model = FluxTransformer2DModel.from_pretrained(exported, local_files_only=True)
    own = dict(model.named_parameters())
    for name, tensor in saved_two["end"]["weights"].items():
        assert torch.equal(own[name], tensor), name


@pytest.mark.slow
def test_lora_shards_and_a_killed_checkpoint_write_resumes_at_one_process(tiny_flux, tmp_path):
    out, run_dir = tmp_path / "out", tmp_path / "run"
    common = {"model": str(tiny_flux), "run_dir": str(run_dir), "out": str(out)}
    common["objective"] = {"kl_coef": 0.1}
    # Best-of-N (the best and the worst of each group of 4, padding rows on a rank without one)
    # and the KL term (the sharded network with its adapters off) run sharded too.
    trainer = {"iterations": 2, "checkpoint_every": 1, "group_size": 4, "train_per_group": 2}
    trainer |= {"prompts_per_iteration": 1}
    # Rank 1 dies after writing its part of the second checkpoint, before it is renamed.
    proc = launch(2, {**common, "tag": "killed", "trainer": trainer, "kill_at": 2})
    assert proc.returncode != 0
    two = ranks(out, "killed", 2)
    root = run_dir / "checkpoints"
    assert (root / "latest").read_text() == "iter-000001"
    assert (root / ".tmp-iter-000002").is_dir() and not (root / "iter-000002").exists()

    # Resume at one process: the stale temporary goes, the LoRA of iter-000001 is back exactly.
    one = workers.train({**common, "tag": "resumed", "trainer": trainer, "resume": True})
    assert not (root / ".tmp-iter-000002").exists()
    assert (root / "latest").read_text() == "iter-000002" and one["iterations"] == 2
    lora = load_file(str(root / "iter-000001" / "trained" / "pytorch_lora_weights.safetensors"))
    start = torch.load(out / "resumed-1.pt", weights_only=True)["start"]["weights"]
    assert len(lora) == len(start) == one["params"]
    for name, tensor in start.items():  # peft's names, as FluxPipeline.save_lora_weights writes
        assert torch.equal(lora["transformer." + name.replace(".default.", ".")], tensor), name

    # LoRA sharded too: every adapter weight is a DTensor, each rank holds about half of them.
    for r in two:
        assert r["sharded"] and r["dtensor_params"] == r["params"] == one["params"]
        assert r["param_bytes"] <= 0.55 * one["param_bytes"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_simulated_nodes_run_dance_and_the_lora_samples(tiny_flux, tmp_path):
    """Two torchrun invocations, one process each, meeting through a c10d rendezvous on
    127.0.0.1: what two nodes sharing a file system run."""
    run_dir = tmp_path / "run"
    port = _free_port()
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"]
    node += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=dance-test"]
    dance_run = ["-m", "dance.cli", "run", "--policy", "flux", "--model", str(tiny_flux)]
    dance_run += ["--reward", "jpeg-compressibility", "--output-dir", str(run_dir), "--no-progress"]
    dance_run += [f"policy.{k}={v}" for k, v in workers.SMALL.items()]
    dance_run += ["sampler.num_steps=3", "trainer.iterations=2", "trainer.group_size=2"]
    dance_run += ["trainer.prompts_per_iteration=2", "trainer.sample_every=0"]
    nodes = [
        subprocess.Popen(node + dance_run, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in nodes]
    for p, (_, err) in zip(nodes, results, strict=True):
        assert p.returncode == 0, err.decode()[-3000:]
    folder = run_dir / "checkpoints" / "iter-000002"
    assert len(list((folder / "sharded").glob("*.distcp"))) == 2
    assert (folder / "trained" / "pytorch_lora_weights.safetensors").is_file()

    from dance.cli.app import main
    from dance.registry import reset_registry

    reset_registry()
    samples = tmp_path / "samples"
    args = ["sample", "--policy", "flux", "--model", str(tiny_flux), "--lora", str(run_dir)]
    args += ["--prompt", "a red square", "--output-dir", str(samples)]
    args += [f"policy.{k}={v}" for k, v in workers.SMALL.items()]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    assert list(samples.glob("*.png"))


def test_a_corrupt_shard_on_resume_is_one_line_and_exit_code_1(tiny_flux, tmp_path, capsys):
    from dance.cli.app import main
    from dance.registry import reset_registry

    run_dir = tmp_path / "run"
    args = ["run", "--policy", "flux", "--model", str(tiny_flux), "--no-progress"]
    args += ["--reward", "jpeg-compressibility", "--output-dir", str(run_dir)]
    args += [f"policy.{k}={v}" for k, v in workers.SMALL.items()]
    args += ["sampler.num_steps=2", "trainer.group_size=2", "trainer.prompts_per_iteration=1"]
    reset_registry()
    with pytest.raises(SystemExit) as exc:
        main([*args, "trainer.iterations=1"])
    assert exc.value.code == 0
    shard = run_dir / "checkpoints" / "iter-000001" / "sharded" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    capsys.readouterr()
    reset_registry()
    with pytest.raises(SystemExit) as exc:
        main(["run", "--resume", "--output-dir", str(run_dir), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 1
    assert err.startswith("error: cannot read") and str(shard.parent) in err
    assert "\n" not in err and "weights_only" not in err


def test_a_full_disk_during_the_sharded_write_says_so_and_leaves_nothing(
    tiny_flux, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    trainer = workers.make_trainer(
        {"model": str(tiny_flux), "run_dir": str(run_dir), "trainer": {"iterations": 1}}
    )
    trainer.iteration_done = 1
    trainer.save()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("torch.distributed.checkpoint.filesystem._write_item", no_space)
    trainer.iteration_done = 2
    with pytest.raises(CheckpointError, match="the disk is full") as exc:
        trainer.save()
    assert "\n" not in str(exc.value)
    root = run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["iter-000001", "latest"]


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tiny_flux, tmp_path):
    """The existing guarantee, through the sharded checkpoint format (one process): weights,
    AdamW states, EMA, schedule and RNG all come back bit for bit."""
    trainer = {"iterations": 2, "ema_decay": 0.9}
    common = {"model": str(tiny_flux), "out": str(tmp_path / "out"), "trainer": trainer}
    straight = workers.train({**common, "run_dir": str(tmp_path / "a"), "tag": "straight"})
    first = {**common, "run_dir": str(tmp_path / "b"), "tag": "first"}
    workers.train({**first, "trainer": {**trainer, "iterations": 1}})
    resumed = workers.train({**first, "tag": "resumed", "resume": True})
    assert straight["iterations"] == resumed["iterations"] == 2
    a = torch.load(tmp_path / "out" / "straight-1.pt", weights_only=True)["end"]
    b = torch.load(tmp_path / "out" / "resumed-1.pt", weights_only=True)["end"]
    assert_equal_states(a, b)
