"""trainer.optimizer=adamw8bit on FSDP2 DTensor shards (two gloo processes on CPU, bitsandbytes'
CPU kernels): it trains like one process, its states are sharded like the weights, and dance's
sharded checkpoints resume it at another number of processes. The scenarios are in
adamw8bit_worker.py. Runs where bitsandbytes 0.50 or later is installed (its CPU kernels)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("bitsandbytes", minversion="0.50")

WORKER = str(Path(__file__).with_name("adamw8bit_worker.py"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def launch(nprocs: int, tmp: Path, tag: str, run: str, resume: bool) -> dict:
    args = {"run_dir": str(tmp / run), "out": str(tmp / "out"), "tag": tag, "resume": resume}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nprocs}", WORKER, json.dumps(args)]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp / "out" / f"{tag}.pt", weights_only=True)


def close(a: list[torch.Tensor], b: list[torch.Tensor], rtol: float, atol: float) -> bool:
    return all(torch.allclose(x, y, rtol=rtol, atol=atol) for x, y in zip(a, b, strict=True))


@pytest.mark.slow
def test_adamw8bit_on_fsdp2_shards_trains_saves_and_resumes_at_another_world_size(tmp_path):
    one = launch(1, tmp_path, "one", "run1", resume=False)
    two = launch(2, tmp_path, "two", "run2", resume=False)
    assert two["saved"]["sharded_states"] and not one["saved"]["sharded_states"]
    assert two["saved"]["step"] == [3.0] * 4
    # Quantization blocks are cut from each rank's shard (and a bias of 64 values is in 8 bits
    # on one process, in fp32 as two shards of 32): close to one process, not equal. Three
    # steps at lr 1e-2 move weights by about 3e-2; the runs differ by a few per cent of that.
    assert close(one["saved"]["weights"], two["saved"]["weights"], 0, 3e-3)
    assert close(one["saved"]["exp_avg"], two["saved"]["exp_avg"], 0.05, 1e-4)

    # The two-process checkpoint, resumed at one and at two processes from other weights.
    for nprocs in (1, 2):
        back = launch(nprocs, tmp_path, f"back{nprocs}", "run2", resume=True)
        for x, y in zip(back["loaded"]["weights"], two["saved"]["weights"], strict=True):
            assert torch.equal(x, y)
        assert back["loaded"]["step"] == [3.0] * 4
        for key in ("exp_avg", "exp_avg_sq"):
            for x, y in zip(back["loaded"][key], two["saved"][key], strict=True):
                # Quantized again, in other blocks (the 64-value bias: fp32 shards saved, one
                # 8-bit tensor loaded): one step of the 8-bit code, a few per cent at most.
                assert torch.allclose(x, y, rtol=0.06, atol=2e-3 * float(y.abs().max())), key
        assert close(back["after"]["weights"], two["after"]["weights"], 0, 3e-3)
