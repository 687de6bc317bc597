"""The trained network(s) of a Wan policy: one transformer (Wan2.1, Wan2.2 TI2V-5B) or Wan2.2
A14B's two experts, ``transformer`` for high noise and ``transformer_2`` for low noise.

The pipelines switch experts on the scheduler timestep: ``transformer`` runs while
``t >= boundary_ratio * 1000`` (``t = sigma * 1000``), ``transformer_2`` below. dance's samplers
hand the policy sigmas, so a sample at sigma ``s`` goes to ``transformer`` when
``s >= boundary_ratio``. Which experts train follows from which steps train: a trained step at
sigma ``s`` trains the expert that serves ``s`` (:func:`expert_of_sigmas`). Both experts carry LoRA
by default; one whose steps are never trained gets no gradient and stays as loaded (AdamW skips
parameters without a gradient). ``policy.experts`` = "high" or "low" leaves the other expert
frozen (no adapters, less memory).

Saved weights: the high-noise expert's LoRA is ``pytorch_lora_weights.safetensors`` in the
directory (``pipe.load_lora_weights(dir)``), the low-noise expert's the same file under
``transformer_2/`` (``pipe.load_lora_weights(dir + "/transformer_2",
load_into_transformer_2=True)``). A full fine-tune writes ``transformer/`` and
``transformer_2/transformer/``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

EXPERT_NAMES = ("transformer", "transformer_2")
TRAINED_EXPERTS = {
    "both": EXPERT_NAMES,
    "high": ("transformer",),
    "low": ("transformer_2",),
}


def expert_of_sigmas(sigmas: torch.Tensor, boundary_ratio: float | None) -> torch.Tensor:
    """Index ``[B]`` (0 = transformer, 1 = transformer_2) of the expert that serves each sigma,
    as the pipelines choose it (``t >= boundary_ratio * num_train_timesteps`` -> transformer)."""
    if boundary_ratio is None:
        return torch.zeros(sigmas.shape, dtype=torch.long, device=sigmas.device)
    return (sigmas < boundary_ratio).long()


def expert_directory(directory: str | Path, expert: str) -> Path:
    """Where an expert's trained weights go inside a saved directory."""
    return Path(directory) if expert == "transformer" else Path(directory) / expert


@contextlib.contextmanager
def all_references(contexts: list[contextlib.AbstractContextManager[None]]) -> Iterator[None]:
    """Enter the reference context of every trained expert."""
    with contextlib.ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        yield
