"""Reading the user's files and checking where a command will write, with one-line errors.

Every file a command reads (recipes, prompt lists, JSON configs of a checkpoint) and every folder
it writes to goes through here, so each kind of problem reads the same everywhere:

* a mistake the user fixes by editing the command (a missing file, a directory where a file is
  expected, text that is not UTF-8, an output folder that cannot be written) is a
  :class:`~dance.errors.UsageError` naming the path and what is expected (exit code 2);
* a file whose bytes are damaged (a JSON config that does not parse, weights that are not
  finite) is a :class:`~dance.errors.FileFault` naming the path and the cause (exit code 1).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dance.errors import FileFault, UsageError

if TYPE_CHECKING:
    import torch


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_input_file(path: str | Path, what: str, expected: str) -> Path:
    """``path`` as a Path when it is a readable regular file; else a UsageError that says whether
    it is missing or a directory. ``what`` names the file ("recipe file"), ``expected`` says what
    it should be ("a recipe .toml file")."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory; expected {expected}.")
    if not path.exists():
        raise UsageError(f"{what} {path} does not exist; expected {expected}.")
    if not path.is_file():
        raise UsageError(f"{what} {path} is not a regular file; expected {expected}.")
    return path


def decode_text(data: bytes, where: str) -> str:
    """``data`` decoded as UTF-8 (a leading byte-order mark is dropped); a UsageError naming the
    line of the first byte that is not UTF-8 otherwise."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UsageError(
            f"{where} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it"
            " with UTF-8 encoding."
        ) from None


def read_bytes(path: Path, what: str) -> bytes:
    """The bytes of ``path``; an OS error (permission denied, I/O error) is a FileFault."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FileFault(f"cannot read {what} {path}: {exc.strerror or first_line(exc)}") from None


def read_text(path: str | Path, what: str, expected: str) -> str:
    """The UTF-8 text of the file ``path``, with :func:`check_input_file`'s checks."""
    path = check_input_file(path, what, expected)
    return decode_text(read_bytes(path, what), f"{what} {path}")


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """The parsed JSON file ``path`` of a checkpoint; a file that does not parse is damaged
    (checkpoints are written by programs, not by hand), so that is a FileFault naming it."""
    path = Path(path)
    data = read_bytes(path, what)
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise FileFault(f"{what} {path} is corrupt: it is not UTF-8 text.") from None
    except json.JSONDecodeError as exc:
        raise FileFault(
            f"{what} {path} is corrupt or truncated: not valid JSON ({exc.msg}, line"
            f" {exc.lineno} column {exc.colno}); restore it from the original files."
        ) from None


def torch_load_error(exc: BaseException, where: str) -> Exception:
    """The one-line error for a ``torch.load(weights_only=True)`` of ``where`` (a description
    with the path) that raised ``exc``: pickled objects or TorchScript are a file to convert (a
    UsageError; torch's own advice to pass weights_only=False would run code from the file), any
    other failure a damaged file (a FileFault)."""
    import pickle

    from dance.errors import ModelLayoutError

    # A pickled object is an "Unsupported global" for torch's weights-only unpickler; random
    # bytes fail as an unsupported operand, a bad load key, a short read.
    text = str(exc)
    refused = isinstance(exc, pickle.UnpicklingError) and "global" in text.lower()
    if refused or "TorchScript" in text:
        return ModelLayoutError(
            f"cannot read {where}: it holds pickled Python objects or TorchScript, which"
            " torch.load(weights_only=True) refuses (dance never runs code from a weights file);"
            " convert it to a plain tensor state dict or .safetensors."
        )
    cause = first_line(exc).split(". ")[0]
    return FileFault(f"cannot read {where}: the file is corrupt or truncated ({cause}).")


def check_writable_dir(path: str | Path, option: str) -> None:
    """Raise a UsageError unless ``path`` is a directory this process can write in, or can be
    created: checked before any model loads, so that a run does not fail after minutes of
    loading. Nothing is created (a probe file is made and removed in the nearest existing
    folder)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file, not a directory; choose another {option}.")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(
            f"{option} {path} cannot be created: {existing} is a file; choose another {option}."
        )
    # A probe file rather than os.access: root passes os.access on a read-only file system.
    try:
        handle, probe = tempfile.mkstemp(prefix=".dance-write-test-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(
            f"{option} {path} is not writable ({exc.strerror or first_line(exc)} in {existing});"
            f" choose another {option} or make it writable."
        ) from None


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, else None.

    A sum per tensor in its own dtype is the fast test (NaN and inf propagate; on one CPU thread
    it reads 2.5 GiB/s of bf16 where an element-wise isfinite, or a sum converting to float32,
    manage under 0.1); only when the sum is not finite is the tensor checked element by element,
    since a sum of large finite values can overflow (fp16)."""
    import torch

    for name, tensor in named:
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        if torch.isfinite(tensor.detach().sum()):
            continue
        if not bool(torch.isfinite(tensor.detach()).all()):
            return name
    return None


def check_finite(named: Iterable[tuple[str, torch.Tensor]], source: str | Path) -> None:
    """Raise a FileFault naming ``source`` when one of the tensors is not finite: weights with NaN
    or inf would train or sample garbage (black images) without any other error."""
    bad = first_nonfinite(named)
    if bad is not None:
        raise FileFault(
            f"{source} holds weights that are not finite (NaN or inf, e.g. {bad}); they would"
            " produce garbage: use an earlier checkpoint or the original files."
        )
