"""The dance-wandb logger in offline mode: a short run writes its W&B run files (the metrics of
metrics.jsonl, the recipe as config), a resumed run continues the same W&B run, and nothing
tries to reach the network."""

from __future__ import annotations

import glob
import ipaddress
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wandb
from wandb.proto import wandb_internal_pb2

import dance
from dance.cli.recipe import resolve
from dance.registry import load_registry
from dance.testing import toy_policy
from dance.testing.toy_policy import toy_recipe
from dance.training.trainer import Trainer
from dance_wandb import RUN_ID_FILE

# -- no network ----------------------------------------------------------------------------------


class _Recorder:
    """A TCP server on 127.0.0.1 that counts connections: W&B's API address and every HTTP(S)
    proxy point at it, so a request wandb (or its wandb-core service process, which inherits
    the environment) tries to send arrives here instead of leaving the machine."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:  # closed
                return
            self.connections += 1
            conn.close()


def _is_local(address: Any) -> bool:
    if not isinstance(address, tuple):  # a Unix socket path: wandb talks to its own service
        return True
    try:
        return ipaddress.ip_address(address[0]).is_loopback
    except ValueError:  # a host name: would need a DNS lookup, i.e. the network
        return False


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """WANDB_MODE=offline in a temporary WANDB_DIR; outgoing connections recorded and refused
    in this process, requests of the service process caught by :class:`_Recorder`."""
    root = tmp_path_factory.mktemp("wandb")
    recorder = _Recorder()
    refused: list[Any] = []
    connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if not _is_local(address):
            refused.append(address)
            raise OSError(f"network access in a test: {address}")
        return connect(self, address)

    url = f"http://127.0.0.1:{recorder.port}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", guarded)
        for name in ("WANDB_API_KEY", "NO_PROXY", "no_proxy"):
            mp.delenv(name, raising=False)
        env = {
            "WANDB_MODE": "offline",
            "WANDB_DIR": str(root / "dir"),
            "WANDB_CONFIG_DIR": str(root / "config"),
            "WANDB_CACHE_DIR": str(root / "cache"),
            "WANDB_DATA_DIR": str(root / "data"),
            "WANDB_SILENT": "true",
            "WANDB_BASE_URL": url,
        }
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            env[name] = env[name.lower()] = url
        for name, value in env.items():
            mp.setenv(name, value)
        yield {"dir": root / "dir", "recorder": recorder, "refused": refused}
        wandb.teardown()  # stop the service process while the guards are still in place
    recorder.server.close()
    assert refused == [] and recorder.connections == 0, "wandb tried to reach the network"


# -- reading W&B's run file ----------------------------------------------------------------------


def read_run_file(path: Path) -> list[wandb_internal_pb2.Record]:
    """The records of a ``run-<id>.wandb`` file: a 7-byte header (``:W&B``, magic 0xBEE1,
    version), then LevelDB log framing, 32 KiB blocks of chunks ``crc32 (4) | length (2) |
    type (1) | data``, type 1 a whole record, 2/3/4 its first/middle/last piece; each record is
    a serialized ``wandb.proto.Record``."""
    blob = path.read_bytes()
    assert blob[:4] == b":W&B", f"{path} is not a W&B run file"
    block, pos, pieces, records = 32 * 1024, 7, b"", []
    while pos + 7 <= len(blob):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", blob[pos : pos + 7])
        data, pos = blob[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pieces = data if kind in (1, 2) else pieces + data
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            records.append(record)
    return records


def _run_files(wandb_dir: Path, run_id: str) -> list[Path]:
    pattern = str(wandb_dir / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb")
    return [Path(p) for p in sorted(glob.glob(pattern))]


def _history(records: list) -> dict[int, dict[str, Any]]:
    """step -> the metrics logged at it (W&B's own _step, _runtime, _timestamp left out)."""
    out = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item
            }
            out[r.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
    return out


def _record(records: list, kind: str) -> Any:
    return next(getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind)


# -- the runs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry():
    return load_registry(extra={"toy": toy_policy})


def _trainer(registry, out: Path, iterations: int, **wandb_options: Any) -> Trainer:
    raw = toy_recipe(iterations=iterations, checkpoint_every=2, loggers=["jsonl", "wandb"])
    raw["loggers"] = {"wandb": {"project": "dance-test", "tags": ["ci"], **wandb_options}}
    return Trainer(resolve(raw, registry), out, dance.Runtime(), registry)


def _next_second() -> None:
    """Wait for the wall clock's next second. wandb names an offline run's folder by the second
    it started and the run id: a resumed run (same id) started within the same second as the
    first would write into the first one's file, and the test reads each run's own file."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


def _metrics_jsonl(out: Path) -> dict[int, dict[str, Any]]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {line.pop("iteration"): line for line in lines}


def test_an_offline_run_writes_its_wandb_run_and_resume_continues_it(registry, offline, tmp_path):
    _trainer(registry, tmp_path, 2).run()
    run_id = (tmp_path / RUN_ID_FILE).read_text().strip()
    (first,) = _run_files(offline["dir"], run_id)
    records = read_run_file(first)
    run = _record(records, "run")
    assert (run.run_id, run.project, list(run.tags)) == (run_id, "dance-test", ["ci"])
    assert run.display_name == tmp_path.name
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["trainer"]["loggers"] == ["jsonl", "wandb"]
    assert config["loggers"]["wandb"]["project"] == "dance-test"
    history, jsonl = _history(records), _metrics_jsonl(tmp_path)
    assert sorted(history) == [0, 1]
    for step, metrics in jsonl.items():  # the same figures as metrics.jsonl, step = iteration
        assert history[step] == pytest.approx(metrics, nan_ok=True)
    assert any(r.WhichOneof("record_type") == "exit" for r in records)  # finished

    # Resumed from the checkpoint of iteration 2: the same W&B run continues at step 2.
    _next_second()
    _trainer(registry, tmp_path, 3).run(resume=True)
    assert (tmp_path / RUN_ID_FILE).read_text().strip() == run_id
    files = _run_files(offline["dir"], run_id)
    assert len(files) == 2
    resumed = read_run_file(files[1])
    assert sorted(_history(resumed)) == [2]
    assert _history(resumed)[2] == pytest.approx(_metrics_jsonl(tmp_path)[2], nan_ok=True)


def test_rewind_on_resume_asks_wandb_to_continue_after_the_checkpoint(registry, offline, tmp_path):
    _trainer(registry, tmp_path, 2).run()
    run_id = (tmp_path / RUN_ID_FILE).read_text().strip()
    # Resumed at iteration 2: W&B keeps steps 0 and 1 and drops anything logged after them
    # (what an attempt killed after logging iteration 2 but before its checkpoint had left).
    _next_second()
    _trainer(registry, tmp_path, 3, on_resume="rewind").run(resume=True)
    latest = read_run_file(_run_files(offline["dir"], run_id)[-1])
    branch = _record(latest, "run").branch_point
    assert (branch.run, branch.value, branch.metric) == (run_id, 1, "_step")  # keep 0 and 1
    assert sorted(_history(latest)) == [2]


def test_a_new_run_in_the_same_folder_gets_a_new_wandb_run(registry, offline, tmp_path):
    _trainer(registry, tmp_path, 1).run()
    first = (tmp_path / RUN_ID_FILE).read_text().strip()
    (tmp_path / "checkpoints").rename(tmp_path / "old-checkpoints")  # not a resume: start over
    _trainer(registry, tmp_path, 1).run()
    second = (tmp_path / RUN_ID_FILE).read_text().strip()
    assert second != first and len(_run_files(offline["dir"], second)) == 1
