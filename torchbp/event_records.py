"""Faster TensorBoard event records; leans on tensorboard's private writer chain
(``SummaryWriter._get_file_writer().event_writer._async_writer._writer``).

Each record of an event file carries two masked CRC-32C checksums, which
tensorboard computes in pure Python: about 15 µs per event, under the GIL, so
the writer thread takes that time from training. google-crc32c computes the
same checksums in C. Where the package or the private chain is missing, a
writer is left as it is: slower, never wrong.
"""

from __future__ import annotations

import struct

from tensorboard.compat.proto.event_pb2 import Event
from torch.utils.tensorboard import SummaryWriter

try:
    import google_crc32c
except ImportError:  # pragma: no cover - a declared dependency; without it records are framed by tensorboard
    google_crc32c = None


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C, rotated right by 15 bits, plus a constant (mod 2³²)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record: length (uint64), its checksum, the data, the data's checksum; little-endian."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


class FramedRecords(bytes):
    """Records already framed by :func:`frame`, handed to a writer's thread as one item."""


def with_fast_checksums(writer: SummaryWriter) -> SummaryWriter:
    """``writer``, its records framed by :func:`frame` from now on where that is possible."""
    record_writer = _record_writer(writer)
    file = getattr(record_writer, "_writer", None)
    if file is not None:
        record_writer.write = lambda data: file.write(data if type(data) is FramedRecords else frame(data))
    return writer


def add_events(writer: SummaryWriter, events: list[bytes]) -> None:
    """Hand serialized ``events`` to ``writer``'s thread: as one item of framed records where the writer
    has fast checksums (a queue item per event costs more than a small network's step), else one by one."""
    if _record_writer(writer) is not None and "write" in vars(_record_writer(writer)):
        records = b"".join(frame(event) for event in events)
        writer._get_file_writer().event_writer._async_writer.write(FramedRecords(records))
    else:  # pragma: no cover - another tensorboard version, or no google-crc32c
        for event in events:
            writer._get_file_writer().event_writer.add_event(Event.FromString(event))


# -- scalar events, serialized by hand --------------------------------------------------------
# A lockstep step logs a few scalars; building each as protobuf objects costs more than the rest
# of the logging. The bytes are those of Event(step, wall_time, Summary(value=[Summary.Value(tag,
# tensor=TensorProto(dtype=DT_FLOAT, float_val=[value]))])), field by field (tests/test_tensorboard_log.py
# checks them against protobuf's own).


def _varint(n: int) -> bytes:
    if n < 0x80:  # a length or a small step: one byte
        return SMALL[n]
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


SMALL = [bytes((n,)) for n in range(0x80)]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


FLOAT32_SCALAR = bytes([0x08, 0x01, 0x2A, 0x04])  # TensorProto: dtype DT_FLOAT (1), float_val: 4 bytes follow


def scalar_value_prefix(tag: str) -> bytes:
    """Summary.Value's tag, and its tensor field up to the float's four bytes: the same for every point of a tag."""
    return _field(1, tag.encode()) + _varint(8 << 3 | 2) + _varint(len(FLOAT32_SCALAR) + 4) + FLOAT32_SCALAR


def scalar_value(prefix: bytes, value: float) -> bytes:
    """A serialized Summary.Value: a float32 scalar tensor under the tag of ``prefix``."""
    return prefix + struct.pack("<f", value)


def event(step: int, wall_time: float, values: list[bytes]) -> bytes:
    """A serialized Event carrying a Summary of the serialized ``values``."""
    summary = b"".join(_field(1, value) for value in values)
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + _field(5, summary)


def _record_writer(writer: SummaryWriter):
    """The object that frames ``writer``'s records, or None where this tensorboard has no such chain."""
    if google_crc32c is None:  # pragma: no cover
        return None
    try:
        return writer._get_file_writer().event_writer._async_writer._writer
    except AttributeError:  # pragma: no cover - another tensorboard version
        return None
