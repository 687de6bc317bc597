"""dance.reporting.tensorboard: CRC-32C, TFRecord framing, and a round trip through
TensorBoard's reader."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from dance.reporting.tensorboard import EventWriter, crc32c, masked_crc32c


def test_crc32c_known_vectors() -> None:
    # The standard check value, and the iSCSI vectors of RFC 3720, appendix B.4.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C


def test_masked_crc32c() -> None:
    crc = 0xE3069283
    expected = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert masked_crc32c(b"123456789") == expected


def _records(path: Path) -> list[bytes]:
    """Parse TFRecord framing by hand, checking both CRCs of every record."""
    blob = path.read_bytes()
    records, pos = [], 0
    while pos < len(blob):
        header = blob[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", blob[pos + 8 : pos + 12])
        assert header_crc == masked_crc32c(header)
        data = blob[pos + 12 : pos + 12 + length]
        (data_crc,) = struct.unpack("<I", blob[pos + 12 + length : pos + 16 + length])
        assert data_crc == masked_crc32c(data)
        records.append(data)
        pos += 16 + length
    assert pos == len(blob)
    return records


def test_file_name_and_framing(tmp_path: Path) -> None:
    with EventWriter(tmp_path / "run") as writer:
        writer.add_scalar("loss", 0.5, step=1)
        writer.add_scalar("loss", 0.25, step=2)
    (path,) = (tmp_path / "run").iterdir()
    assert path.name.startswith("events.out.tfevents.")
    records = _records(path)
    assert len(records) == 3
    assert b"brain.Event:2" in records[0]
    assert b"loss" in records[1] and struct.pack("<f", 0.25) in records[2]


def test_two_writers_in_one_directory_do_not_collide(tmp_path: Path) -> None:
    a, b = EventWriter(tmp_path), EventWriter(tmp_path)
    a.close()
    b.close()
    assert a.path != b.path
    assert len(list(tmp_path.iterdir())) == 2


def test_closed_writer_refuses_writes(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path)
    writer.close()
    writer.close()  # closing twice is fine
    with pytest.raises(ValueError, match="closed"):
        writer.add_scalar("x", 1.0, step=0)


def test_tensorboard_reads_what_we_write(tmp_path: Path) -> None:
    loader_mod = pytest.importorskip(
        "tensorboard.backend.event_processing.event_file_loader",
        reason="tensorboard (a test tool, not a dependency) is needed to read the file back",
    )
    from tensorboard.util import tensor_util

    written = [
        ("reward/mean", 0.125, 0, 1000.5),
        ("reward/mean", -3.75, 1, 1001.0),
        ("loss", 1e-3, 7, 1002.25),
        ("loss", float("inf"), 123456789012, 1003.0),  # int64 step beyond 32 bits
        ("loss", 2.0, -5, 1004.0),  # negative steps are ten-byte varints
        ("lr/héllo", 1e40, 8, 1005.0),  # beyond float32: stored as inf
    ]
    with EventWriter(tmp_path) as writer:
        for tag, value, step, wall in written:
            writer.add_scalar(tag, value, step, wall_time=wall)
    (path,) = tmp_path.iterdir()

    events = list(loader_mod.EventFileLoader(str(path)).Load())
    assert events[0].file_version == "brain.Event:2"
    got = []
    for event in events[1:]:
        (value,) = event.summary.value
        if value.HasField("simple_value"):
            number = value.simple_value
        else:  # newer loaders migrate simple_value into a scalar tensor
            number = float(tensor_util.make_ndarray(value.tensor))
        got.append((value.tag, number, event.step, event.wall_time))

    def f32(x: float) -> float:
        return struct.unpack("<f", struct.pack("<f", x))[0]

    inf = float("inf")
    expected = [
        ("reward/mean", 0.125, 0, 1000.5),
        ("reward/mean", -3.75, 1, 1001.0),
        ("loss", f32(1e-3), 7, 1002.25),
        ("loss", inf, 123456789012, 1003.0),
        ("loss", 2.0, -5, 1004.0),
        ("lr/héllo", inf, 8, 1005.0),
    ]
    assert got == expected
