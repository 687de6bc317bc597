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


# -- cutting a run's events back on resume --------------------------------------------------------


def read_records(path: str | os.PathLike[str]) -> list[bytes]:
    """The data of every complete TFRecord in ``path``, in order.

    Reading stops at the first record that is cut short or fails its CRC: that is the tail a killed
    writer leaves, and nothing after it can be framed reliably.
    """
    with open(path, "rb") as f:
        blob = f.read()
    records, pos = [], 0
    while pos + 12 <= len(blob):
        header = blob[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", blob[pos + 8 : pos + 12])
        end = pos + 12 + length
        if header_crc != masked_crc32c(header) or end + 4 > len(blob):
            break
        data = blob[pos + 12 : end]
        if struct.unpack("<I", blob[end : end + 4])[0] != masked_crc32c(data):
            break
        records.append(data)
        pos = end + 4
    return records


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def event_step(event: bytes) -> tuple[int, bool]:
    """The ``step`` (field 2; 0 when absent, as proto3 reads it) of a serialized Event, and
    whether it carries a summary (field 5) rather than being the file_version header."""
    pos, step, has_summary = 0, 0, False
    while pos < len(event):
        key, pos = _read_varint(event, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _read_varint(event, pos)
            if field == 2:
                step = value - (1 << 64) if value >= 1 << 63 else value  # int64
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        elif wire_type == _LENGTH:
            length, pos = _read_varint(event, pos)
            pos += length
            has_summary = has_summary or field == 5
        else:
            raise ValueError(f"unexpected protobuf wire type {wire_type} in a TensorBoard event")
    return step, has_summary


def _cut(record: bytes, step: int) -> bool:
    at, has_summary = event_step(record)
    return has_summary and at >= step


def truncate_events(logdir: str | os.PathLike[str], step: int, keep: str | None = None) -> int:
    """Remove every summary event with ``step >= step`` from the event files in ``logdir``.

    On resume from a checkpoint of iteration ``step`` the iterations from ``step`` on run again;
    without this cut, TensorBoard readers that do not apply purge markers would show those steps
    twice. Each file is rewritten to a temporary file and renamed over the original, so a crash
    leaves either the old or the new file. ``keep`` (a path) is a file not to touch, such as the
    one the current writer has open. Returns the number of events removed.
    """
    removed = 0
    if not os.path.isdir(logdir):
        return 0
    for name in sorted(os.listdir(logdir)):
        path = os.path.join(os.fspath(logdir), name)
        if "tfevents" not in name or not os.path.isfile(path):
            continue
        if keep is not None and os.path.abspath(path) == os.path.abspath(keep):
            continue
        records = read_records(path)
        kept = [r for r in records if not _cut(r, step)]
        size = sum(len(tfrecord(r)) for r in records)
        if len(kept) == len(records) and size == os.path.getsize(path):
            continue  # nothing to cut and no torn tail
        removed += len(records) - len(kept)
        tmp = os.path.join(os.fspath(logdir), f".cut-{os.getpid()}")  # no "tfevents": unread
        with open(tmp, "wb") as f:
            f.write(b"".join(tfrecord(r) for r in kept))
        os.replace(tmp, path)
    return removed
