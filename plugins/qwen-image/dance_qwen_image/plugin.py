"""Entry point of the Qwen-Image plugin: registers the ``qwen-image`` policy with dance."""

from __future__ import annotations

from collections.abc import Callable

import dance
from dance_qwen_image.policy import QwenImagePolicy


@dance.hookimpl
def register_policies(register: Callable[[type], None]) -> None:
    register(QwenImagePolicy)
