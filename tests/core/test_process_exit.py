"""How a process of dance ends: one process raises SystemExit; a rank of several leaves its group,
waits for its threads, runs atexit handlers, flushes its output and skips the interpreter's
finalization (dance.distributed.end_process explains why)."""

import sys
import textwrap

import pytest

import dance.distributed as dist
from dance.testing.multiprocess import launch

RANK_SCRIPT = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from pathlib import Path

    import dance.distributed as dist

    out, code = Path(sys.argv[1]), int(sys.argv[2])
    dist.init_from_env(timeout_s=60)
    r = dist.rank()


    class WrittenAtFinalization:
        def __del__(self):
            (out / f"finalized-{r}").write_text("")


    kept = WrittenAtFinalization()
    atexit.register(lambda: (out / f"atexit-{r}").write_text(str(dist.is_distributed())))


    def late() -> None:
        time.sleep(0.3)
        (out / f"thread-{r}").write_text("")


    threading.Thread(target=late).start()
    print(f"rank {r} ends", end="")  # no newline: stays in the buffer until flushed
    dist.end_process(code + r)
    """
)


def test_one_process_exits_with_system_exit():
    assert not dist.joined_a_group()
    with pytest.raises(SystemExit) as info:
        dist.end_process(3)
    assert info.value.code == 3


def test_a_rank_leaves_its_group_flushes_and_skips_finalization(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    # Unbuffered output off: the text only reaches the file if end_process flushes it.
    outcomes = launch(
        [sys.executable, str(script), str(tmp_path), "4"], 2, env={"PYTHONUNBUFFERED": ""}
    )
    assert [o.returncode for o in outcomes] == [4, 5], outcomes
    for o in outcomes:
        assert o.stdout == f"rank {o.rank} ends"
        assert o.stderr == ""
        # atexit handlers ran, after the group was left; the thread was waited for.
        assert (tmp_path / f"atexit-{o.rank}").read_text() == "False"
        assert (tmp_path / f"thread-{o.rank}").exists()
        # Finalization (where backend threads can abort the process) never started.
        assert not (tmp_path / f"finalized-{o.rank}").exists()
