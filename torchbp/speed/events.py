"""TensorBoard scalar events, serialized by hand and framed with checksums computed in C.

The log (:mod:`torchbp.tensorboard_log`) holds a lockstep step's four scalars and, every
2 seconds, hands them to :func:`write_scalars`: one event per run and step. Written the
plain way, each event is built from protobuf objects, queued on its own, and framed by the
writer thread with tensorboard's two CRC-32C checksums, computed in pure Python under the
GIL; the log's flush waits for all of it. Here the events are serialized field by field,
framed with google-crc32c's checksums, and queued as one item per flush.

Measured with a throwaway script (not kept): LockstepTrainer.step with each log in one process,
interleaved, a flush's time spread over the steps it wrote; the project's 2-core CPU machine,
torch 2.13.0, eleven runs (six with 2 threads, five with 1), nine of them while another test run
shared the cores. A flush costs 16–40 µs a step this way (109 once, under the heaviest load) against
155–445 µs the plain way, on the derivation's 2-3-1 network (float64) and on the mid MLP
(3×256, batch 64) alike: 10.6–19.4 % of a lockstep step on the 2-3-1 network in every run;
2.7–6.6 % on the mid MLP in the eight runs where its step took 3.6–8.6 ms, 0.2–0.7 % in the
three where the other load stretched it to 54–123 ms. ``python -m experiments.bench`` cannot
show it: its second or so of 20 ms blocks mostly ends before the log's first flush, and its
median would leave a block holding one out.

Leans on tensorboard's private writer chain
(``SummaryWriter._get_file_writer().event_writer._async_writer._writer``). Where that chain
or google-crc32c is missing, events go through the writer's own ``add_event``: slower,
never wrong.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from functools import lru_cache
from itertools import groupby
from operator import itemgetter
from typing import Any

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.types_pb2 import DT_FLOAT
from torch.utils.tensorboard import SummaryWriter

try:
    import google_crc32c

    FAST_CHECKSUMS = True
except ImportError:  # pragma: no cover - a declared dependency; without it records are framed by tensorboard
    FAST_CHECKSUMS = False

Scalar = tuple[int, float, str, float]  # step, wall time, tag, value


def write_scalars(
    writer: SummaryWriter, scalars: list[Scalar], metadata: Callable[[str], SummaryMetadata | None]
) -> None:
    """``scalars``, in step order, as one event per step in ``writer``'s file, each a float32 scalar
    tensor; a value carries ``metadata(tag)`` where that is not None (a chart's description, on a
    tag's first event)."""
    with_fast_checksums(writer)
    events = []
    for step, same_step in groupby(scalars, key=itemgetter(0)):
        group = list(same_step)
        events.append(event(step, group[0][1], [_value(tag, value, metadata(tag)) for _, _, tag, value in group]))
    add_events(writer, events)


def _value(tag: str, value: float, metadata: SummaryMetadata | None) -> bytes:
    if metadata is None:
        return scalar_value(_prefix(tag), value)
    tensor = TensorProto(dtype=DT_FLOAT, float_val=[value])
    serialized: bytes = Summary.Value(tag=tag, tensor=tensor, metadata=metadata).SerializeToString()
    return serialized


# -- framing: TFRecord's length, data and checksums ------------------------------------------


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C, rotated right by 15 bits, plus a constant (mod 2³²)."""
    crc: int = google_crc32c.value(data)
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
    if file is not None and "write" not in vars(record_writer):
        record_writer.write = lambda data: file.write(data if type(data) is FramedRecords else frame(data))
    return writer


def add_events(writer: SummaryWriter, events: list[bytes]) -> None:
    """Hand serialized ``events`` to ``writer``'s thread: as one item of framed records where the writer
    has fast checksums (a queue item per event costs more than a small network's step), else one by one."""
    if _record_writer(writer) is not None and "write" in vars(_record_writer(writer)):
        records = b"".join(frame(event) for event in events)
        file_writer(writer).event_writer._async_writer.write(FramedRecords(records))
    else:  # pragma: no cover - another tensorboard version, or no google-crc32c
        for event in events:
            file_writer(writer).event_writer.add_event(Event.FromString(event))


def file_writer(writer: SummaryWriter) -> Any:
    """``writer``'s file writer (a private part of torch's SummaryWriter, which leaves it untyped)."""
    return writer._get_file_writer()  # type: ignore[no-untyped-call]


def _record_writer(writer: SummaryWriter) -> Any:
    """The object that frames ``writer``'s records, or None where this tensorboard has no such chain."""
    if not FAST_CHECKSUMS:  # pragma: no cover
        return None
    try:
        return file_writer(writer).event_writer._async_writer._writer
    except AttributeError:  # pragma: no cover - another tensorboard version
        return None


# -- scalar events, serialized by hand --------------------------------------------------------
# Building each scalar as protobuf objects costs more than the rest of the logging. The bytes are
# those of Event(step, wall_time, Summary(value=[Summary.Value(tag, tensor=TensorProto(dtype=DT_FLOAT,
# float_val=[value]))])), field by field (tests/test_speed_events.py checks them against protobuf's own).


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


_prefix = lru_cache(maxsize=1024)(scalar_value_prefix)  # a run's few tags, serialized once


def scalar_value(prefix: bytes, value: float) -> bytes:
    """A serialized Summary.Value: a float32 scalar tensor under the tag of ``prefix``."""
    return prefix + struct.pack("<f", value)


def event(step: int, wall_time: float, values: list[bytes]) -> bytes:
    """A serialized Event carrying a Summary of the serialized ``values``."""
    summary = b"".join(_field(1, value) for value in values)
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + _field(5, summary)
