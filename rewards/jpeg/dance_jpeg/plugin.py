"""Entry point of the ``dance-jpeg`` distribution."""

from __future__ import annotations

from collections.abc import Callable

import dance
from dance_jpeg.reward import JpegCompressibility, JpegIncompressibility


@dance.hookimpl
def register_rewards(register: Callable[[type], None]) -> None:
    register(JpegCompressibility)
    register(JpegIncompressibility)
