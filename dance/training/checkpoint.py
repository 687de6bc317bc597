"""Atomic, sharded checkpoints of a run: trained weights, optimizer, EMA, schedulers, RNG states,
data position.

Layout of ``checkpoints/iter-NNNNNN`` (iterations completed)::

    sharded/            torch.distributed.checkpoint: trained weights, optimizer states and the
                        EMA of the policy's trainable modules, one .distcp file per rank that
                        wrote it, readable at any other number of processes
    trainer_state.pt    iteration, lr scheduler, prompt position, RNG (rank 0 writes it)
    trained/            the trained weights as the model's diffusers pipeline loads them
                        (pytorch_lora_weights.safetensors, or the network's folder), gathered
    ema/                the same for the EMA weights, when on

A policy that names no trainable modules keeps its optimizer and EMA in ``trainer_state.pt`` and
its weights in ``trained/`` (there is nothing to shard).

Every rank writes into ``.tmp-iter-NNNNNN``; after a barrier rank 0 renames it into place and then
replaces ``latest`` atomically, so an interrupted write never leaves a half checkpoint behind as
the one to resume, and stale temporaries are removed when the next run starts. State is loaded
with ``torch.load(weights_only=True)``: no pickled code runs on resume.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import dance.distributed as dist
from dance.errors import CheckpointError, UsageError
from dance.interfaces import Policy
from dance.training.ema import EMA
from dance.training.sharding import local_tensor

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
WEIGHTS_DIR = "trained"
EMA_DIR = "ema"
SHARDED_DIR = "sharded"
TMP_PREFIX = ".tmp-"


@dataclass
class TrainingState:
    """What the optimizer trains: the policy's trainable modules (FSDP2-sharded under torchrun;
    empty for a policy that names none), their trainable parameters, the optimizer, the EMA."""

    modules: list[torch.nn.Module]
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    # Copies of the trained parameters an objective keeps (DiffusionNFT's sampling policy):
    # name -> one tensor per trained parameter, sharded like it; saved and loaded in place.
    shadows: dict[str, list[torch.Tensor]] = field(default_factory=dict)


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


# ---- saving ---------------------------------------------------------------------------------


def save_checkpoint(
    run_dir: Path,
    iteration: int,
    policy: Policy,
    training: TrainingState,
    trainer_state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint ``iter-NNNNNN`` and point ``latest`` at it. Every rank calls this.

    ``trainer_state`` must hold no tensors of the trained weights (it is rank 0's, loaded with
    ``weights_only=True``); without trainable modules the optimizer and EMA states are added to it.
    A failed write (a full disk, say) removes the temporary folder and raises CheckpointError.
    """
    root = checkpoint_root(run_dir)
    name = f"iter-{iteration:06d}"
    final, tmp = root / name, root / f"{TMP_PREFIX}{name}"
    if dist.is_main():
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    failure: BaseException | None = None
    try:
        _write(tmp, policy, training, dict(trainer_state))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # every rank must learn of a failure on any rank (DCP's
        failure = exc  # CheckpointException is a BaseException)
    if _any_rank(failure is not None):
        if dist.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(tmp, failure) from failure
    dist.barrier()
    if dist.is_main():
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomic(root / "latest", name)
        for old in sorted(p for p in root.glob("iter-*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def _write(tmp: Path, policy: Policy, training: TrainingState, state: dict[str, Any]) -> None:
    if training.modules:
        import torch.distributed.checkpoint as dcp

        with _one_process_is_fine():
            dcp.save(_sharded_state(training), checkpoint_id=str(tmp / SHARDED_DIR))
    else:
        state["optimizer"] = training.optimizer.state_dict()
        state["ema"] = training.ema.state_dict() if training.ema is not None else {}
        state["shadows"] = training.shadows
    # The diffusers-loadable export: under FSDP2 every rank takes part in gathering it.
    policy.save_trained(str(tmp / WEIGHTS_DIR))
    if training.ema is not None:
        with training.ema.applied():
            policy.save_trained(str(tmp / EMA_DIR))
    if dist.is_main():
        torch.save(state, tmp / STATE_FILE)


def _sharded_state(training: TrainingState) -> dict[str, Any]:
    """The state ``torch.distributed.checkpoint`` saves and loads in place: the trainable weights
    and optimizer states by parameter name (frozen weights come from the model), and the EMA by
    position in the trainable parameters (the same on every rank, at every world size)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optim = get_state_dict(
        torch.nn.ModuleList(training.modules), training.optimizer, options=_options()
    )
    state: dict[str, Any] = {"model": model, "optim": optim}
    if training.ema is not None:
        state["ema"] = {str(i): s for i, s in enumerate(training.ema.shadow)}
    for name, tensors in training.shadows.items():
        state[f"shadow.{name}"] = {str(i): t for i, t in enumerate(tensors)}
    return state


def _options() -> Any:
    """Trainable weights only. Not strict: the frozen weights the model holds are absent on
    purpose; every trainable one is in the state dict (built from the model itself), and
    ``dcp.load`` fails on any of them missing from the checkpoint."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=False)


@contextlib.contextmanager
def _one_process_is_fine() -> Iterator[None]:
    """torch.distributed.checkpoint warns when it runs without a process group; one process is
    a supported layout here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")
        yield


def _write_error(tmp: Path, failure: BaseException | None) -> CheckpointError:
    if failure is None:
        return CheckpointError(f"writing checkpoint {tmp} failed on another rank; removed it")
    if any(_is_disk_full(e) for e in _causes(failure)):
        return CheckpointError(
            f"the disk is full: writing checkpoint {tmp} failed (no space left on device); the "
            "partial checkpoint was removed. Free some space and resume with --resume"
        )
    return CheckpointError(
        f"writing checkpoint {tmp} failed ({_first_line(failure)}); the partial checkpoint was "
        "removed"
    )


def _is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and the per-rank failures a CheckpointException of
    torch.distributed.checkpoint wraps."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        for wrapped in getattr(e, "failures", {}).values():  # {rank: (exception, traceback)}
            first = wrapped[0] if isinstance(wrapped, tuple) else wrapped
            if isinstance(first, BaseException):
                todo.append(first)


def _any_rank(flag: bool) -> bool:
    if not dist.is_distributed():
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    if torch.distributed.get_backend() == "nccl":
        t = t.cuda()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Remove ``.tmp-*`` folders that a killed checkpoint write left; call on rank 0 at start."""
    root = checkpoint_root(run_dir)
    stale = sorted(p for p in root.glob(f"{TMP_PREFIX}*") if p.is_dir()) if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


# ---- finding and loading --------------------------------------------------------------------


def is_intact(path: Path) -> bool:
    """Whether ``path`` holds every part a resume reads."""
    if not ((path / STATE_FILE).is_file() and (path / WEIGHTS_DIR).is_dir()):
        return False
    sharded = path / SHARDED_DIR
    return not sharded.exists() or (sharded / ".metadata").is_file()


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names; when that one is missing or incomplete, the newest intact
    ``iter-*`` checkpoint, saying so in one line. None when the run has no checkpoint."""
    root = checkpoint_root(run_dir)
    pointer = root / "latest"
    named: Path | None = None
    if pointer.is_file():
        try:
            text = pointer.read_text().strip()
        except (OSError, UnicodeDecodeError):
            text = ""
        named = root / text if text else None
        if named is not None and named.parent == root and is_intact(named):
            return named
    intact = sorted(p for p in root.glob("iter-*") if p.is_dir() and is_intact(p))
    if not intact:
        if pointer.exists():
            raise CheckpointError(
                f"{pointer} names {named or 'nothing readable'}, which is missing or incomplete, "
                "and no intact iter-* checkpoint is left to resume from"
            )
        return None
    if dist.is_main():
        why = f"names {named}, which is missing or incomplete" if pointer.exists() else "is missing"
        logger.warning(
            "%s %s; resuming from %s, the newest intact checkpoint", pointer, why, intact[-1]
        )
    return intact[-1]


def load_checkpoint(path: Path, policy: Policy, training: TrainingState) -> dict[str, Any]:
    """Load the trained weights, optimizer and EMA into place (at any number of processes) and
    return the trainer state. A corrupt or truncated file is one CheckpointError line naming it;
    so are weights that are not finite."""
    state = _load_trainer_state(path / STATE_FILE)
    sharded = path / SHARDED_DIR
    if sharded.is_dir():
        if not training.modules:
            raise UsageError(
                f"{path} holds sharded weights of trainable modules, but policy "
                f"'{policy.name}' names none; resume it with the policy that wrote it"
            )
        _load_sharded(sharded, training)
    else:
        if training.modules:
            raise UsageError(
                f"{path} has no {SHARDED_DIR}/ folder: it was not written by a run of policy "
                f"'{policy.name}' with sharded checkpoints"
            )
        policy.load_trained(str(path / WEIGHTS_DIR))
        _guarded(path / STATE_FILE, lambda: training.optimizer.load_state_dict(state["optimizer"]))
        if training.ema is not None and state.get("ema"):
            training.ema.load_state_dict(state["ema"])
        for name, tensors in training.shadows.items():
            saved = state.get("shadows", {}).get(name)
            if saved is None:
                raise CheckpointError(f"{path} has no '{name}' weights, which this run keeps")
            with torch.no_grad():
                for t, v in zip(tensors, saved, strict=True):
                    t.copy_(v)
    if not _all_finite(training.params):
        raise CheckpointError(
            f"{path}: the trained weights contain NaN or inf; refusing to resume from them "
            "(resume from an earlier checkpoint, or start again with a lower learning rate)"
        )
    return state


def _load_trainer_state(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: the checkpoint is incomplete")
    state = _guarded(file, lambda: torch.load(file, map_location="cpu", weights_only=True))
    if not isinstance(state, dict) or "iteration" not in state:
        raise CheckpointError(f"{file} is not a dance trainer state (corrupt?)")
    return state


def _load_sharded(folder: Path, training: TrainingState) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _sharded_state(training)
    with _one_process_is_fine():
        _guarded(folder, lambda: dcp.load(state, checkpoint_id=str(folder)))
    set_state_dict(
        torch.nn.ModuleList(training.modules),
        training.optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=_options(),
    )
    if training.ema is not None:  # loaded in place, unless DCP replaced a tensor
        for i, shadow in enumerate(training.ema.shadow):
            loaded = state["ema"][str(i)]
            if loaded is not shadow:
                local_tensor(shadow).copy_(local_tensor(loaded))
    for name, tensors in training.shadows.items():
        for i, tensor in enumerate(tensors):
            loaded = state[f"shadow.{name}"][str(i)]
            if loaded is not tensor:
                local_tensor(tensor).copy_(local_tensor(loaded))


def _guarded(path: Path, load: Callable[[], Any]) -> Any:
    """Run ``load``; any failure to read becomes one CheckpointError line naming ``path``."""
    try:
        return load()
    except (UsageError, CheckpointError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # DCP's CheckpointException is a BaseException
        cause = _cause(exc)
        if path.is_dir():
            cause = cause.replace("the file", "one of its .distcp files", 1)
        raise CheckpointError(f"cannot read {path}: {cause}") from None


def _cause(exc: BaseException) -> str:
    """The root cause of a failed load in a few words. torch's unpickling errors advise
    ``weights_only=False``, which would run code from the file: never repeat that advice."""
    causes = list(_causes(exc))
    if any(isinstance(e, EOFError) for e in causes):
        return "the file is truncated (it ends too early)"
    for e in causes:
        text = "" if hasattr(e, "failures") else str(e)  # a DCP wrapper quotes tracebacks
        if "Unpickl" in type(e).__name__ or "weights_only" in text or "Weights only" in text:
            return "the file is not a valid checkpoint (corrupt, or not written by dance)"
    return f"the file is truncated or corrupt ({_first_line(causes[-1])})"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _all_finite(params: list[torch.nn.Parameter]) -> bool:
    bad = any(not bool(torch.isfinite(local_tensor(p.detach())).all()) for p in params)
    return not _any_rank(bad)


# ---- RNG ------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
