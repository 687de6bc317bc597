"""Resume hygiene of the run's logs: metrics.jsonl and TensorBoard hold every iteration once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dance
from dance.cli.recipe import resolve
from dance.registry import load_registry
from dance.reporting.run_log import cut_metrics
from dance.reporting.tensorboard import EventWriter, event_step, read_records, truncate_events
from dance.testing import toy_policy
from dance.training.trainer import Trainer


def _steps(logdir: Path, tag: bytes = b"loss") -> list[int]:
    """Steps of every summary event naming ``tag``, over all event files, read by hand."""
    steps = []
    for path in sorted(logdir.iterdir()):
        for record in read_records(path):
            step, has_summary = event_step(record)
            if has_summary and tag in record:
                steps.append(step)
    return sorted(steps)


def test_cut_metrics_keeps_earlier_iterations_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"iteration": i, "loss": 0.1 * i}) for i in range(5)]
    path.write_text("\n".join(lines) + '\n{"iteration": 5, "lo')
    assert cut_metrics(path, 3) == 3
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [0, 1, 2]
    assert cut_metrics(path, 3) == 0  # nothing more to cut


def test_truncate_events_cuts_steps_and_a_torn_tail(tmp_path):
    with EventWriter(tmp_path) as writer:
        for step in range(5):
            writer.add_scalar("loss", float(step), step)
            writer.add_scalar("reward", float(step), step)
        first = Path(writer.path)
    first.write_bytes(first.read_bytes() + b"\x07\x00\x00")  # a killed write's torn record
    keep = EventWriter(tmp_path)  # the resumed run's own file: left alone
    keep.add_scalar("loss", 9.0, 3)
    keep.flush()
    assert truncate_events(tmp_path, 3, keep=keep.path) == 4
    keep.close()
    assert _steps(tmp_path) == [0, 1, 2, 3]
    records = read_records(first)
    assert b"brain.Event:2" in records[0]  # the header stays
    assert sum(len(r) + 16 for r in records) == first.stat().st_size  # torn tail gone
    assert truncate_events(tmp_path, 4) == 0  # idempotent: everything left is before 4


def _trainer(registry, out: Path, iterations: int) -> Trainer:
    raw = {
        "policy": {"name": "toy-flow"},
        "sampler": {"name": "dance-sde", "num_steps": 3},
        "rewards": [{"name": "jpeg-incompressibility"}],
        "trainer": {
            "iterations": iterations,
            "prompts_per_iteration": 1,
            "group_size": 2,
            "checkpoint_every": 2,
            "sample_every": 0,
        },
    }
    return Trainer(resolve(raw, registry), out, dance.Runtime(), registry)


class _Killed(Exception):
    pass


def test_no_iteration_twice_after_kill_and_resume(tmp_path):
    registry = load_registry(extra={"toy": toy_policy})
    first = _trainer(registry, tmp_path, iterations=5)
    real_iteration = first.iteration

    def iteration(it: int):
        if it == 3:  # killed during iteration 3: iteration 2 is logged but not checkpointed
            raise _Killed
        return real_iteration(it)

    first.iteration = iteration
    with pytest.raises(_Killed):
        first.run()
    first.log.close()
    metrics = tmp_path / "metrics.jsonl"
    assert [json.loads(x)["iteration"] for x in metrics.read_text().splitlines()] == [0, 1, 2]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "iter-000002"

    summary = _trainer(registry, tmp_path, iterations=5).run(resume=True)
    assert summary["iterations"] == 5
    iterations = [json.loads(x)["iteration"] for x in metrics.read_text().splitlines()]
    assert iterations == [0, 1, 2, 3, 4]
    assert _steps(tmp_path / "tensorboard") == [0, 1, 2, 3, 4]


def test_tensorboard_reader_sees_each_step_once_after_resume(tmp_path):
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard (a test tool, not a dependency) is needed to read the files back",
    )
    logdir = tmp_path / "tensorboard"
    with EventWriter(logdir) as writer:  # the first attempt: 4 iterations logged
        for step in range(4):
            writer.add_scalar("loss", float(step), step)
    resumed = EventWriter(logdir)  # resumed from the checkpoint of iteration 2
    truncate_events(logdir, 2, keep=resumed.path)
    for step in range(2, 5):
        resumed.add_scalar("loss", 10.0 + step, step)
    resumed.close()
    # purge_orphaned_data=False: count what the files hold, not what TensorBoard's purge hides
    reader = accumulator.EventAccumulator(str(logdir), purge_orphaned_data=False)
    reader.Reload()
    if "loss" in reader.Tags()["scalars"]:
        got = [(e.step, e.value) for e in reader.Scalars("loss")]
    else:  # newer loaders migrate simple_value into tensors
        from tensorboard.util import tensor_util

        got = [
            (e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
            for e in reader.Tensors("loss")
        ]
    assert got == [(0, 0.0), (1, 1.0), (2, 12.0), (3, 13.0), (4, 14.0)]
