"""Built-in training objectives, registered through the entry point ``objectives`` exactly as a
third-party plugin registers its own (see :mod:`dance.hookspecs`)."""

from __future__ import annotations

from dance.hookspecs import hookimpl


@hookimpl
def register_objectives(register):  # noqa: ANN001 - the hook's callback
    from dance.objectives.grpo import GRPOObjective
    from dance.objectives.nft import NFTObjective

    register(GRPOObjective)
    register(NFTObjective)
