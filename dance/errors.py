"""Errors that carry a message meant for the user.

The CLI turns a :class:`UsageError` into one line on stderr and exit code 2, a :class:`RunError`
(a :class:`RewardError`, :class:`CheckpointError` or :class:`FileFault`, and an ``OSError`` such
as a full disk) into one line and exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UsageError(Exception):
    """A mistake in what the user asked for (names, paths, values): one line, exit code 2."""


class ConfigError(UsageError):
    """A config field, recipe or override that is malformed or out of range."""


class ModelLayoutError(UsageError):
    """A model directory that is missing or not in the layout a policy expects."""


class RunError(RuntimeError):
    """A fault during a run that the user cannot fix by editing the command (a non-finite loss or
    weights, another rank's failure): one line naming the cause, exit code 1."""


class CheckpointError(RunError):
    """A checkpoint that cannot be written (disk full) or read (truncated, corrupt, non-finite
    weights): a fault the user cannot fix by editing the command; one line naming the path and
    the cause, exit code 1."""


class FileFault(RunError):
    """A fault the user cannot fix by editing the command: a corrupt or truncated file, weights
    that are not finite, a full disk, a permission denied. One line naming the path and the
    cause, exit code 1."""


class RewardError(RunError):
    """A reward raised or returned a non-finite value while scoring a rollout."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest known name, or '' when nothing is close.
    Case is ignored ('NFT' finds 'nft')."""
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.5)
    return f" Did you mean '{by_lower[close[0]]}'?" if close else ""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UsageError:
    """The error for an unknown component name: lists the known names and suggests the closest."""
    known = sorted(known)
    listing = ", ".join(known) if known else "none installed"
    return UsageError(f"unknown {kind} '{name}' (known: {listing}).{did_you_mean(name, known)}")
