"""Running the `dance` command inside a test: its exit code and what it printed."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from dance.cli.app import main


def run_cli(args: Sequence[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``dance ARGS`` in this process: ``(exit code, stdout, stderr)``; paths may be ``Path``."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err
