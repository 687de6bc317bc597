"""Entry point of the ``dance-clip-rewards`` distribution."""

from __future__ import annotations

from collections.abc import Callable

import dance
from dance_clip_rewards.aesthetic import LaionAesthetic
from dance_clip_rewards.clip_score import ClipScore
from dance_clip_rewards.hps import HpsReward
from dance_clip_rewards.pickscore import PickScore


@dance.hookimpl
def register_rewards(register: Callable[[type], None]) -> None:
    register(HpsReward)
    register(ClipScore)
    register(PickScore)
    register(LaionAesthetic)
