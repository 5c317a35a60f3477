"""The log's speed path: scalar events serialized by hand and framed with checksums computed in C,
read back by tensorboard as the events protobuf and tensorboard's own writer would make."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.types_pb2 import DT_FLOAT
from tensorboard.compat.tensorflow_stub import errors
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboards_checksum
from tensorboard.plugins.scalar.metadata import create_summary_metadata
from torch.utils.tensorboard import SummaryWriter

from torchbp.speed import events
from torchbp.speed.events import frame, masked_crc32c
from torchbp.tensorboard_log import TensorBoardLog, event_files


@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)), b"event" * 100])
def test_checksums_are_tensorboards_own(data):
    assert masked_crc32c(data) == tensorboards_checksum(data)


def test_a_framed_record_reads_back_and_a_corrupted_one_is_refused(tmp_path):
    data = Event(step=7, wall_time=1.0).SerializeToString()
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_bytes(frame(data))
    corrupted = bytearray(frame(data))
    corrupted[-1] ^= 1  # the data's checksum, one bit off
    bad.write_bytes(bytes(corrupted))
    PyRecordReader_New(str(good)).GetNext()  # tensorboard's reader checks both checksums
    with pytest.raises(errors.DataLossError, match="crc32"):
        PyRecordReader_New(str(bad)).GetNext()
    assert [event.step for event in LegacyEventFileLoader(str(good)).Load()] == [7]


@given(
    step=st.integers(0, 2**62),
    wall_time=st.floats(0, 2e9),
    values=st.lists(st.tuples(st.text(min_size=1, max_size=80), st.floats(width=32)), min_size=1, max_size=4),
)
def test_scalar_events_serialized_by_hand_are_protobufs_own(step, wall_time, values):
    ours = events.event(
        step, wall_time, [events.scalar_value(events.scalar_value_prefix(tag), value) for tag, value in values]
    )
    theirs = Event(
        step=step,
        wall_time=wall_time,
        summary=Summary(
            value=[
                Summary.Value(tag=tag, tensor=TensorProto(dtype=DT_FLOAT, float_val=[value])) for tag, value in values
            ]
        ),
    )
    assert Event.FromString(ours) == theirs


def test_written_scalars_are_one_event_per_step_the_first_of_a_tag_carrying_its_metadata(tmp_path):
    writer = SummaryWriter(tmp_path)
    described = create_summary_metadata(display_name="loss", description="the loss")
    seen = set()

    def metadata(tag):
        first = tag not in seen
        seen.add(tag)
        return described if first else None

    events.write_scalars(writer, [(0, 1.0, "loss", 0.5), (0, 1.0, "error", 0.25), (1, 2.0, "loss", 0.125)], metadata)
    writer.close()
    (path,) = event_files(tmp_path)
    written = [event for event in LegacyEventFileLoader(str(path)).Load() if event.summary.value]
    scalar = lambda tag, value, carried=None: Summary.Value(  # noqa: E731
        tag=tag, tensor=TensorProto(dtype=DT_FLOAT, float_val=[value]), metadata=carried
    )
    assert written == [
        Event(
            step=0,
            wall_time=1.0,
            summary=Summary(value=[scalar("loss", 0.5, described), scalar("error", 0.25, described)]),
        ),
        Event(step=1, wall_time=2.0, summary=Summary(value=[scalar("loss", 0.125)])),
    ]


def test_the_logs_writers_frame_records_with_the_checksums_computed_in_c(tmp_path):
    log = TensorBoardLog(tmp_path)
    log.metric("accuracy", 1.0, 1.0, 0)
    log.raw_error("max_grad_error", 0.0, 0)
    log.flush()
    for writer in log.writers.values():
        record_writer = writer._get_file_writer().event_writer._async_writer._writer
        assert "write" in vars(record_writer), "tensorboard's pure-Python checksums are back: 15 µs per event"
    log.close()
