"""Entry point of the ``dance-videoalign`` distribution."""

from __future__ import annotations

from collections.abc import Callable

import dance
from dance_videoalign.reward import VideoAlignReward


@dance.hookimpl
def register_rewards(register: Callable[[type], None]) -> None:
    register(VideoAlignReward)
