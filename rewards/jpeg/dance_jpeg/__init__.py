"""JPEG compressibility rewards (DDPO) for dance."""

from dance_jpeg.reward import (
    JpegCompressibility,
    JpegConfig,
    JpegIncompressibility,
    jpeg_sizes_kb,
    to_uint8,
)

__all__ = [
    "JpegCompressibility",
    "JpegConfig",
    "JpegIncompressibility",
    "jpeg_sizes_kb",
    "to_uint8",
]
