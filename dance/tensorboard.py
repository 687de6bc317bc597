"""A minimal TensorBoard event-file writer using only the standard library.

TensorBoard reads ``events.out.tfevents.*`` files: a sequence of TFRecords, each holding one
serialized ``tensorflow.Event`` protobuf. Only scalars are needed here, so the few protobuf fields
involved are encoded by hand and the ``tensorboard`` package stays out of the runtime dependencies.

TFRecord framing (tensorflow/core/lib/io/record_writer.cc)::

    uint64 length (little endian) | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

with ``masked(c) = ((c >> 15) | (c << 17)) + 0xA282EAD8`` (mod 2**32) and CRC-32C (Castagnoli).

Protobuf messages (tensorflow/core/util/event.proto, tensorflow/core/framework/summary.proto)::

    Event         { double wall_time = 1; int64 step = 2; string file_version = 3;
                    Summary summary = 5; }
    Summary       { repeated Value value = 1; }
    Summary.Value { string tag = 1; float simple_value = 2; }
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from typing import BinaryIO

# -- CRC-32C (Castagnoli), reflected polynomial 0x82F63B78 ----------------------------------------


def _make_crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _make_crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (``crc32c(b"123456789") == 0xE3069283``)."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The CRC TFRecord stores: rotated and offset, since CRCs of data holding CRCs are weak."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord holding ``data``."""
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", masked_crc32c(header))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


# -- protobuf wire format -------------------------------------------------------------------------

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _varint(value: int) -> bytes:
    # Negative int64 values are sent as their 64-bit two's complement (ten bytes), as protobuf does.
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, _LENGTH) + _varint(len(payload)) + payload


def _event(
    wall_time: float, step: int = 0, file_version: str | None = None, summary: bytes | None = None
) -> bytes:
    out = _key(1, _FIXED64) + struct.pack("<d", wall_time)
    if step:  # proto3 leaves default values out
        out += _key(2, _VARINT) + _varint(step)
    if file_version is not None:
        out += _length_delimited(3, file_version.encode("utf-8"))
    if summary is not None:
        out += _length_delimited(5, summary)
    return out


def _float32(value: float) -> bytes:
    try:
        return struct.pack("<f", value)
    except OverflowError:  # beyond float32's range: store the infinity float32 rounding gives
        return struct.pack("<f", math.copysign(math.inf, value))


def _scalar_summary(tag: str, value: float) -> bytes:
    summary_value = _length_delimited(1, tag.encode("utf-8"))
    summary_value += _key(2, _FIXED32) + _float32(value)
    return _length_delimited(1, summary_value)


# -- the writer -----------------------------------------------------------------------------------


class EventWriter:
    """Writes scalars to ``<logdir>/events.out.tfevents.<time>.<hostname>`` for TensorBoard.

    Usable as a context manager. Values are stored as float32 (TensorBoard's ``simple_value``).
    """

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        os.makedirs(logdir, exist_ok=True)
        base = os.path.join(
            os.fspath(logdir), f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        )
        # Two writers started in the same second must not share a file; TensorBoard reads any
        # file whose name contains "tfevents", so a numeric suffix is fine.
        self.path = base
        suffix = 0
        while True:
            try:
                self._file: BinaryIO | None = open(self.path, "xb")  # noqa: SIM115 - kept open
                break
            except FileExistsError:
                suffix += 1
                self.path = f"{base}.{suffix}"
        self._write(_event(time.time(), file_version="brain.Event:2"))
        self.flush()

    def _write(self, event: bytes) -> None:
        if self._file is None:
            raise ValueError(f"EventWriter for {self.path} is closed")
        self._file.write(tfrecord(event))

    def add_scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        """Record ``value`` (anything ``float()`` accepts, e.g. a 0-d tensor) under ``tag``."""
        wall = time.time() if wall_time is None else float(wall_time)
        self._write(_event(wall, int(step), summary=_scalar_summary(tag, float(value))))

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
