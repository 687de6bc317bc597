"""What a run prints: plain lines without a terminal, a bar that keeps its headline on a narrow
terminal, and the exit codes of a run stopped by Ctrl-C or SIGTERM."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from rich.console import Console, Group

from dance.reporting.run_log import RunLog

HEADLINE = "shapes +0.6123 jpeg-compressibility +0.1234  2.31 s/it"


def test_plain_lines_every_iteration_when_slow(tmp_path):
    out = io.StringIO()  # not a terminal
    log = RunLog(tmp_path, 3, enabled=True, progress=True, stream=out, plain_every_s=0.0)
    log.start_at(0)
    for it in range(3):
        log.log(it, {"loss": 0.5}, HEADLINE)
    log.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "grpo: 3 of 3 iterations to run"
    assert [line.split("  ")[0] for line in lines[1:]] == [f"iteration {i}/3" for i in (1, 2, 3)]
    assert all(HEADLINE in line and "elapsed 0:00:0" in line for line in lines[1:])


def test_the_first_plain_line_names_the_runs_objective(tmp_path):
    out = io.StringIO()
    config = {"objective": {"name": "nft"}}
    log = RunLog(tmp_path, 2, enabled=True, progress=True, stream=out, config=config)
    log.start_at(0)
    log.close()
    assert out.getvalue().splitlines()[0] == "nft: 2 of 2 iterations to run"


def test_plain_lines_are_thinned_when_fast_but_keep_the_last(tmp_path):
    out = io.StringIO()
    log = RunLog(tmp_path, 100, enabled=True, progress=True, stream=out, plain_every_s=3600)
    log.start_at(40)
    for it in range(40, 50):  # stopped early (Ctrl-C) after iteration 50 of 100
        log.log(it, {"loss": 0.5}, HEADLINE)
    log.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "grpo: 60 of 100 iterations to run, resuming after iteration 40"
    assert [line.split("  ")[0] for line in lines[1:]] == ["iteration 41/100", "iteration 50/100"]


def test_no_progress_prints_nothing(tmp_path):
    out = io.StringIO()
    log = RunLog(tmp_path, 2, enabled=True, progress=False, stream=out)
    log.start_at(0)
    log.log(0, {"loss": 0.5}, HEADLINE)
    log.close()
    assert out.getvalue() == ""


def test_bar_keeps_the_headline_whole_on_a_narrow_terminal(tmp_path, monkeypatch):
    monkeypatch.setattr("dance.reporting.run_log.is_terminal", lambda stream: True)
    log = RunLog(tmp_path, 10, enabled=True, progress=True, stream=io.StringIO())
    try:
        log.log(0, {"loss": 0.5}, HEADLINE)
        assert log.progress is not None
        screen = Console(file=io.StringIO(), width=40, record=True)
        screen.print(Group(*log.progress.get_renderables()))
        text = screen.export_text()
    finally:
        log.close()
    assert "…" not in text
    assert "".join(text.split()).startswith("".join(HEADLINE.split()))  # wrapped, not cut
    assert "1/10" in text


SCRIPT = textwrap.dedent(
    """
    import sys
    import dance.registry
    from dance.cli.app import main
    from dance.testing import toy_policy

    dance.registry._REGISTRY = dance.registry.load_registry(extra={"toy": toy_policy})
    main(sys.argv[1:])
    """
)
TOY = ["run", "--policy", "toy-flow", "--reward", "jpeg-compressibility"]
TOY += ["trainer.group_size=2", "trainer.prompts_per_iteration=1", "sampler.num_steps=3"]
TOY += ["trainer.sample_every=0"]


def _start(tmp_path, args):
    script = tmp_path / "dance_toy.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    "sig, code, word", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_a_stopped_run_prints_plain_lines_saves_and_exits_with_the_signal_code(
    tmp_path, sig, code, word
):
    # stdout is a pipe, as under CI, nohup or SLURM: plain lines, flushed as they are written
    proc = _start(tmp_path, [*TOY, "trainer.iterations=100000", "--output-dir", "run"])
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # up to the first iteration's line: the run is in its loop
        seen.append(line)
        if line.startswith("iteration 1/") or len(seen) > 20:
            break
    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    assert "grpo: 100000 of 100000 iterations to run\n" in seen
    first = seen[-1]
    assert first.startswith("iteration 1/100000  jpeg-compressibility ")
    assert " s/it  elapsed " in first
    assert f"stopped by {word} after" in rest
    done = int(rest.split(f"stopped by {word} after ")[1].split()[0])
    assert f"iteration {done}/100000 " in "".join(seen) + rest  # the last one is always printed
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text()
    assert latest == f"iter-{done:06d}"
