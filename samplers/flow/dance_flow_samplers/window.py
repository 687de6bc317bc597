"""MixGRPO's sliding SDE window: where the window is at a training iteration.

Follows MixGRPO (Li et al., 2025, arXiv 2507.21802), the "progressive" sliding window of its
training loop (``GRPOTrainingStates`` in ``fastvideo/utils/grpo_states.py`` of
Tencent-Hunyuan/MixGRPO, as its published scripts run it: ``--prog_overlap --roll_back``). The
window of ``w`` steps starts at step ``l``; every ``tau`` iterations (the shift interval) ``l``
advances by the stride ``s``. The window never holds the last step: ``l`` runs up to ``N - 2``
and the window is cut at ``N - 1``. When ``l`` would pass ``N - 2`` the published scripts restart
it at its first position (``restart``); without ``--roll_back`` it stays at ``N - 2`` (``hold``).
A stride of 0 keeps the window where it starts (MixGRPO-Flash*'s frozen window).

One deliberate difference: MixGRPO's code cuts the window at its ``max_timesteps = N - 2`` with
an exclusive range although its comment names ``N - 2`` the last trainable index, so there the
window at ``l = N - 2`` is empty and those ``tau`` iterations train nothing. Here the cut is at
``N - 1`` (the comment's intent): the same positions at the same iterations, never an empty window.

A function of the iteration alone (no state), so a resumed run finds the window of its iteration.
"""

from __future__ import annotations

WINDOW_SCHEDULES = ("fixed", "progressive")
WINDOW_ENDS = ("restart", "hold")


def last_window_start(num_steps: int) -> int:
    """The last step a sliding window may start on: ``N - 2`` (the last step stays outside)."""
    return num_steps - 2


def sliding_window(
    iteration: int,
    num_steps: int,
    start: int,
    size: int,
    shift_interval: int,
    stride: int,
    at_end: str,
) -> tuple[int, int]:
    """The window ``[first, stop)`` of steps at training ``iteration`` (0-based)."""
    last = last_window_start(num_steps)
    moves = iteration // shift_interval  # how often the window has moved so far
    if stride == 0:
        first = start
    elif at_end == "restart":
        positions = (last - start) // stride + 1  # start, start + s, ... up to N - 2
        first = start + (moves % positions) * stride
    else:  # hold: clipped to the last start, as MixGRPO's code without --roll_back
        first = min(start + moves * stride, last)
    return first, min(first + size, num_steps - 1)
