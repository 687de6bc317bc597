"""Every shell command in README.md and docs/ runs and exits 0, so the docs cannot drift from the
code. How commands are found and made short is in ``doc_commands.py``.

One test per page: its commands run in order in one fresh working folder, since a page's later
commands use what its earlier ones wrote (`dance run --output-dir runs/tiny`, then
`dance sample --lora runs/tiny`). Pages whose commands take more than a few seconds each are
marked slow.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from doc_commands import ROOT, DocCommand, Tiny, doc_pages, extract, prepare

TIMEOUT_S = 300
# Pages that run a GRPO run with evaluation, a benchmark or pretraining: tens of seconds.
SLOW_PAGES = {"README.md", "docs/best-of-n.md", "docs/demo.md", "docs/performance.md"}


def _pages() -> list:
    out = []
    for page in doc_pages():
        name = page.relative_to(ROOT).as_posix()
        if not extract(page):
            continue
        marks = [pytest.mark.slow] if name in SLOW_PAGES else []
        out.append(pytest.param(name, id=name, marks=marks))
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return Tiny(tmp_path_factory.mktemp("doc-models"))


def _run(command: DocCommand, tiny: Tiny, workdir: Path, site: list[str]) -> None:
    prepared = prepare(command, tiny, workdir)
    site += prepared.site
    paths = list(site) + ([str(tiny.open_clip_configs())] if prepared.needs_open_clip else [])
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]),
    )
    env.update(prepared.env)
    start = time.perf_counter()
    try:
        result = subprocess.run(
            prepared.argv,
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{command.where()}: `{command.text}` ran past {TIMEOUT_S} s")
    seconds = time.perf_counter() - start
    assert result.returncode == 0, (
        f"{command.where()}: `{command.text}` exited {result.returncode} after {seconds:.0f} s\n"
        f"ran: {' '.join(prepared.argv)}\n{(result.stdout + result.stderr)[-3000:]}"
    )


@pytest.mark.parametrize("page", _pages())
def test_every_command_of_the_page_runs(page: str, tiny: Tiny, tmp_path: Path) -> None:
    commands = extract(ROOT / page)
    site: list[str] = []
    ran = 0
    for command in commands:
        if command.skip:
            continue
        _run(command, tiny, tmp_path, site)
        ran += 1
    assert ran or all(c.skip for c in commands)


def test_blocks_are_found_by_the_documented_rule(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    text = "\n".join(
        [
            "```",
            "dance plugins",
            "dance run --policy flux \\",
            "    trainer.iterations=2   # two",
            "```",
            "```",
            "evaluation on 96 held-out images",  # output, not a command
            "```",
            "<!-- no-test: needs the network -->",
            "```bash",
            "hf download KwaiVGI/VideoReward",
            "```",
            "```toml",
            "[policy]",
            "```",
        ]
    )
    page.write_text(text)
    found = extract(page, "page.md")
    assert [(c.line, c.text, c.skip) for c in found] == [
        (2, "dance plugins", None),
        (3, "dance run --policy flux  trainer.iterations=2   # two", None),
        (11, "hf download KwaiVGI/VideoReward", "needs the network"),
    ]


def test_runs_are_shortened_and_real_models_replaced(tiny: Tiny, tmp_path: Path) -> None:
    command = DocCommand(
        "README.md", 1, "dance run --policy flux --model /models/FLUX.1-dev trainer.group_size=4"
    )
    argv = prepare(command, tiny, tmp_path).argv
    assert argv[argv.index("--model") + 1] == str(tiny.policy("flux"))
    assert "policy.height=32" in argv and "trainer.iterations=1" in argv
    assert "trainer.group_size=2" not in argv  # the command's own setting stays
    demo = prepare(DocCommand("README.md", 1, "dance run"), tiny, tmp_path).argv
    assert "evaluation.seeds=1" in demo
    tmp = prepare(DocCommand("x.md", 1, "python -m dance_flux.tiny /tmp/tiny-flux"), tiny, tmp_path)
    assert tmp.argv[-1] == f"{tiny.tmp}/tiny-flux"
