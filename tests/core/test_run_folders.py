"""Run folders: a new folder per `dance run`, runs/latest, --resume and --lora without paths."""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import sys

import pytest
import torch.multiprocessing as mp

import dance.registry
from dance.registry import load_registry
from dance.reporting.run_folders import choose_run_dir, latest_run, new_run_dir, point_latest
from dance.testing import toy_policy
from dance.testing.cli_runner import run_cli

TINY = ["trainer.iterations=1", "trainer.group_size=2", "trainer.prompts_per_iteration=1"]
TINY += ["sampler.num_steps=3", "trainer.sample_every=0"]
RUN = ["run", "--policy", "toy-flow", "--reward", "jpeg-compressibility", "--no-progress", *TINY]
NAME = re.compile(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_toy-flow(-\d+)?")


@pytest.fixture
def in_tmp(monkeypatch, tmp_path):
    """A toy registry, and the working directory in tmp_path so that runs/ lands there."""
    monkeypatch.setattr(dance.registry, "_REGISTRY", load_registry(extra={"toy": toy_policy}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_folders(root):
    return sorted(p.name for p in (root / "runs").iterdir() if p.name != "latest")


def test_two_runs_in_a_row_then_resume_and_sample(in_tmp, capsys):
    code, out, err = run_cli(RUN, capsys)
    assert code == 0, err
    code, out, err = run_cli(RUN, capsys)
    assert code == 0, err
    first, second = run_folders(in_tmp)
    assert NAME.fullmatch(first) and NAME.fullmatch(second)
    assert f"run folder: runs/{second}" in out
    assert os.readlink(in_tmp / "runs" / "latest") == second  # relative link to the newest
    assert (in_tmp / "runs" / first / "checkpoints" / "latest").read_text() == "iter-000001"

    code, out, err = run_cli(["run", "--resume", "--no-progress", "trainer.iterations=2"], capsys)
    assert code == 0, err
    assert "finished after 2 iterations" in out
    assert (in_tmp / "runs" / second / "checkpoints" / "latest").read_text() == "iter-000002"
    assert (in_tmp / "runs" / first / "checkpoints" / "latest").read_text() == "iter-000001"
    assert run_folders(in_tmp) == [first, second]  # resuming makes no new folder
    code, out, err = run_cli(["run", "--resume", "--no-progress"], capsys)  # already finished
    assert code == 0 and "finished after 2 iterations" in out, err

    code, out, err = run_cli(["sample", "--lora", "runs/latest", "--prompt", "a cat"], capsys)
    assert code == 0, err
    manifest = json.loads((in_tmp / "samples" / "samples.json").read_text())
    assert manifest["policy"] == "toy-flow"  # the run's own policy settings were taken


def test_sample_lora_accepts_every_path_form(in_tmp, capsys):
    assert run_cli(RUN, capsys)[0] == 0
    (name,) = run_folders(in_tmp)
    checkpoint = f"runs/{name}/checkpoints/iter-000001"
    forms = ["runs", "runs/latest", f"runs/{name}", checkpoint, f"{checkpoint}/trained"]
    forms.append(f"{checkpoint}/trained/toy_lora.safetensors")
    for i, form in enumerate(forms):
        args = ["sample", "--lora", form, "--prompt", "a cat", "--output-dir", f"s{i}"]
        code, _, err = run_cli(args, capsys)
        assert code == 0, (form, err)
        assert json.loads((in_tmp / f"s{i}" / "samples.json").read_text())["policy"] == "toy-flow"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "nowhere", "does not exist; expected a run folder"),
        (lambda p: (p / "notes.txt").write_text("x") and p / "notes.txt", "is a .txt file"),
        (lambda p: (p / "w").mkdir() or (p / "w" / "a.txt").touch() or p / "w", "holds a.txt"),
        (lambda p: (p / "r" / "checkpoints").mkdir(parents=True) or p / "r", "without a finished"),
    ],
)
def test_sample_lora_wrong_path_says_found_and_expected(in_tmp, capsys, make, message):
    path = make(in_tmp)
    code, _, err = run_cli(["sample", "--lora", str(path), "--prompt", "a cat"], capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_safetensors_file_beside_another_is_refused(in_tmp, capsys):
    folder = in_tmp / "w"
    folder.mkdir()
    (folder / "a.safetensors").write_bytes(b"")
    (folder / "b.safetensors").write_bytes(b"")
    code, _, err = run_cli(["sample", "--lora", "w/a.safetensors", "--prompt", "a cat"], capsys)
    assert code == 2 and "also holds b.safetensors" in err


def test_pointer_file_where_symlinks_are_unavailable(in_tmp, capsys, monkeypatch):
    def no_symlinks(*args, **kwargs):
        raise OSError("symbolic links are not supported here")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    assert run_cli(RUN, capsys)[0] == 0
    assert run_cli(RUN, capsys)[0] == 0
    latest = in_tmp / "runs" / "latest"
    newest = run_folders(in_tmp)[-1]
    assert latest.is_file() and latest.read_text().strip() == newest
    code, out, err = run_cli(["run", "--resume", "--no-progress", "trainer.iterations=2"], capsys)
    assert code == 0 and "after 2 iterations" in out, err
    assert (in_tmp / "runs" / newest / "checkpoints" / "latest").read_text() == "iter-000002"
    # --output-dir runs/latest (the pointer file) leads to the run too
    code, out, err = run_cli(
        ["run", "--resume", "--no-progress", "--output-dir", "runs/latest", "trainer.iterations=3"],
        capsys,
    )
    assert code == 0 and "after 3 iterations" in out, err
    code, _, err = run_cli(["sample", "--lora", "runs/latest", "--prompt", "a cat"], capsys)
    assert code == 0, err


def test_resume_without_any_run_is_a_usage_error(in_tmp, capsys):
    code, _, err = run_cli(["run", "--resume"], capsys)
    assert code == 2 and "nothing to resume: runs/latest" in err and "--output-dir" in err


def test_a_run_that_fails_at_once_leaves_no_folder(in_tmp, capsys):
    assert run_cli(RUN, capsys)[0] == 0
    (good,) = run_folders(in_tmp)
    # one sampling step, the last, is excluded from training: the trainer refuses to start
    code, _, err = run_cli([*RUN, "sampler.num_steps=1"], capsys)
    assert code == 2 and "no sampling step can be trained" in err
    assert run_folders(in_tmp) == [good]
    assert latest_run(in_tmp / "runs") == in_tmp / "runs" / good


def test_folder_names_are_collision_safe(tmp_path):
    now = datetime.datetime(2026, 12, 1, 23, 40, 12)
    names = [new_run_dir(tmp_path, "demo", now).name for _ in range(3)]
    assert names == ["2026-12-01_23-40-12_demo", "2026-12-01_23-40-12_demo-2"] + [
        "2026-12-01_23-40-12_demo-3"
    ]


def test_an_old_latest_folder_is_kept_under_a_dated_name(tmp_path, capsys):
    old = tmp_path / "runs" / "latest"
    (old / "checkpoints").mkdir(parents=True)
    (old / "config.toml").write_text("x = 1\n")
    run_dir, previous = choose_run_dir("demo", None, tmp_path / "runs")
    assert previous is not None and (previous / "config.toml").read_text() == "x = 1\n"
    assert previous.name.endswith("_previous-latest")
    assert latest_run(tmp_path / "runs") == run_dir
    assert "is now in" in capsys.readouterr().err
    point_latest(tmp_path / "runs", previous)  # the pointer moves back and forth atomically
    assert latest_run(tmp_path / "runs") == previous


def _choose_on_rank(rank: int, port: int, root: str, queue) -> None:  # noqa: ANN001
    import torch.distributed as torch_dist

    os.environ.update(RANK=str(rank), WORLD_SIZE="2")
    torch_dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    try:
        run_dir, _ = choose_run_dir("demo", None, __import__("pathlib").Path(root))
        queue.put((rank, str(run_dir)))
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.skipif(sys.platform == "win32", reason="gloo over TCP")
def test_ranks_share_one_folder(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_choose_on_rank, args=(r, port, str(tmp_path / "runs"), queue))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert got[0] == got[1]
    assert [p.name for p in (tmp_path / "runs").iterdir() if p.name != "latest"] == [
        os.path.basename(got[0])
    ]


def test_runs_that_is_a_file_is_one_line(in_tmp, capsys):
    (in_tmp / "runs").write_text("not a folder")
    code, _, err = run_cli(RUN, capsys)
    assert code == 2 and "cannot make a run folder in runs" in err and "--output-dir" in err
    assert len(err.strip().splitlines()) == 1
