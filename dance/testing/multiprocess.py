"""Start N local processes as one torch.distributed job (gloo on CPU), for tests.

Each rank is its own Python subprocess with the environment torchrun would give it (RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, a free MASTER_PORT), one intra-op thread
(OMP_NUM_THREADS=1) and no GPU (CUDA_VISIBLE_DEVICES empty), so that real exit codes, signals and
per-rank output can be checked.

- :func:`run_function` calls a module-level function on every rank inside an initialised process
  group and returns each rank's return value (it raises :class:`RanksFailed` if a rank fails);
- :func:`launch` runs a command (``[sys.executable, "-m", "dance.cli", "run", ...]``) on every
  rank and returns each rank's exit code and output;
- :func:`start` starts the command and returns a :class:`Job` to signal or wait on.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(
    rank: int, world_size: int, port: int, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of one rank: the caller's, plus what torchrun sets, on CPU, one thread."""
    env = dict(os.environ)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


@dataclass
class RankOutcome:
    """How one rank ended: its exit code (negative: killed by that signal) and its output."""

    rank: int
    returncode: int
    stdout: str
    stderr: str


class Job:
    """N running processes of one job; output goes to files, so a full pipe never blocks them."""

    def __init__(
        self,
        argv: Sequence[str],
        world_size: int,
        env: dict[str, str] | None = None,
        rank_env_extra: dict[int, dict[str, str]] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        self._logs = tempfile.TemporaryDirectory(prefix="dance-ranks-")
        port = free_port()
        self.procs: list[subprocess.Popen] = []
        self._files = []
        for r in range(world_size):
            extra = {**(env or {}), **(rank_env_extra or {}).get(r, {})}
            out = open(Path(self._logs.name) / f"{r}.out", "w+")  # noqa: SIM115 - closed in wait
            err = open(Path(self._logs.name) / f"{r}.err", "w+")  # noqa: SIM115
            self._files.append((out, err))
            self.procs.append(
                subprocess.Popen(
                    list(argv),
                    env=rank_env(r, world_size, port, extra),
                    cwd=cwd,
                    stdout=out,
                    stderr=err,
                )
            )

    def send_signal(self, sig: int = signal.SIGTERM, ranks: Sequence[int] | None = None) -> None:
        for r in ranks if ranks is not None else range(len(self.procs)):
            if self.procs[r].poll() is None:
                self.procs[r].send_signal(sig)

    def wait(self, timeout: float = 120.0) -> list[RankOutcome]:
        """Wait for every rank; after ``timeout`` seconds kill them all and raise TimeoutError
        with their output (a hang is a failure, never a silent wait)."""
        deadline = time.monotonic() + timeout
        timed_out = False
        for p in self.procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                break
        if timed_out:
            for p in self.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        outcomes = []
        for r, (p, (out, err)) in enumerate(zip(self.procs, self._files, strict=True)):
            out.seek(0)
            err.seek(0)
            outcomes.append(RankOutcome(r, p.returncode, out.read(), err.read()))
            out.close()
            err.close()
        self._logs.cleanup()
        if timed_out:
            raise TimeoutError(f"ranks still running after {timeout} s:\n" + _describe(outcomes))
        return outcomes


def start(
    argv: Sequence[str],
    world_size: int,
    env: dict[str, str] | None = None,
    rank_env_extra: dict[int, dict[str, str]] | None = None,
    cwd: str | Path | None = None,
) -> Job:
    """Start ``argv`` once per rank; ``rank_env_extra[r]`` adds variables to rank r only."""
    return Job(argv, world_size, env, rank_env_extra, cwd)


def launch(
    argv: Sequence[str],
    world_size: int,
    env: dict[str, str] | None = None,
    rank_env_extra: dict[int, dict[str, str]] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 120.0,
) -> list[RankOutcome]:
    """Run ``argv`` once per rank and wait for all (see :meth:`Job.wait`)."""
    return start(argv, world_size, env, rank_env_extra, cwd).wait(timeout)


class RanksFailed(RuntimeError):
    """At least one rank of :func:`run_function` exited with an error."""

    def __init__(self, outcomes: list[RankOutcome]) -> None:
        super().__init__("a rank failed:\n" + _describe(outcomes))
        self.outcomes = outcomes


def run_function(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> list[Any]:
    """Call ``fn(*args)`` on ``world_size`` ranks inside an initialised gloo process group and
    return each rank's return value, in rank order.

    ``fn`` must be a module-level function (pickled by name; the module is imported on each
    rank with this process's ``sys.path``, so a test module works); ``args`` and the return
    values must pickle.
    """
    with tempfile.TemporaryDirectory(prefix="dance-fn-") as folder:
        payload = Path(folder) / "payload.pkl"
        with payload.open("wb") as f:
            pickle.dump(list(sys.path), f)
            pickle.dump((fn, args), f)
        argv = [sys.executable, "-m", "dance.testing.multiprocess", str(payload), folder]
        outcomes = launch(argv, world_size, env=env, timeout=timeout)
        if any(o.returncode != 0 for o in outcomes):
            raise RanksFailed(outcomes)
        results = []
        for r in range(world_size):
            with (Path(folder) / f"result-{r}.pkl").open("rb") as f:
                results.append(pickle.load(f))
        return results


def _describe(outcomes: list[RankOutcome], tail: int = 3000) -> str:
    return "\n".join(
        f"--- rank {o.rank} exit {o.returncode}\nstdout: {o.stdout[-tail:]}\n"
        f"stderr: {o.stderr[-tail:]}"
        for o in outcomes
    )


def _worker(payload: str, folder: str) -> None:
    """One rank of :func:`run_function`: join the group, call the function, store its result."""
    with open(payload, "rb") as f:
        sys.path[:] = pickle.load(f)
        fn, args = pickle.load(f)
    import dance.distributed as dist

    dist.init_from_env(timeout_s=120)
    result = fn(*args)
    with (Path(folder) / f"result-{dist.rank()}.pkl").open("wb") as f:
        pickle.dump(result, f)


if __name__ == "__main__":
    import dance.distributed

    try:
        _worker(sys.argv[1], sys.argv[2])
        code = 0
    except BaseException:
        traceback.print_exc()
        code = 1
    dance.distributed.end_process(code)  # leaves the group, then ends past finalization
