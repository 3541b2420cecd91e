"""Bad input closes only the offending connection or gets a Kafka error code; the broker
keeps serving everyone else."""

import struct

import pytest
from confluent_kafka import Producer
from rawkafka import Conn, api_versions, produce_v3, record_batch

CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
UNSUPPORTED_VERSION = 35


@pytest.fixture
def existing(broker, topic):
    p = Producer({"bootstrap.servers": broker.bootstrap})
    p.produce(topic, value=b"seed")
    assert p.flush(30) == 0
    return topic


def still_serving(broker):
    c = Conn(broker.bootstrap)
    error, keys = api_versions(c, 0)
    c.close()
    return error == 0 and 0 in keys


@pytest.mark.parametrize(
    "frame",
    [
        struct.pack(">i", 0x7FFFFFFF),  # far beyond the request size limit
        struct.pack(">i", -5),  # negative size
        struct.pack(">i", 3) + b"abc",  # too short for a header
        struct.pack(">i", 8) + struct.pack(">hhi", 9999, 0, 1),  # unknown API key
        struct.pack(">i", 8) + struct.pack(">hhi", 3, 99, 1),  # Metadata v99
        struct.pack(">i", 10) + struct.pack(">hhi", 3, 1, 1) + b"\x7f\x7f",  # truncated header
    ],
)
def test_malformed_frames_close_only_that_connection(broker, frame):
    bystander = Conn(broker.bootstrap)
    c = Conn(broker.bootstrap)
    c.send_raw(frame)
    assert c.is_closed(), "the broker kept a connection that sent a malformed frame"
    assert api_versions(bystander, 0)[0] == 0, "another connection was disturbed"
    assert still_serving(broker)


def test_truncated_produce_body_closes_connection(broker, existing):
    c = Conn(broker.bootstrap)
    body = b"\xff\xff" + struct.pack(">hi", -1, 1000) + struct.pack(">i", 1)  # topics cut short
    header = struct.pack(">hhi", 0, 3, 1) + b"\x00\x01x"
    c.send_raw(struct.pack(">i", len(header) + len(body)) + header + body)
    assert c.is_closed()
    assert still_serving(broker)


def test_api_versions_newer_than_supported_gets_v0_answer(broker):
    c = Conn(broker.bootstrap)
    error, keys = api_versions(c, 42)
    assert error == UNSUPPORTED_VERSION
    assert keys[18][0] == 0 and keys[0][0] >= 3
    # The connection stays usable, as KIP-511 clients expect.
    assert api_versions(c, 0)[0] == 0
    c.close()


def test_corrupt_crc_is_refused(broker, existing):
    c = Conn(broker.bootstrap)
    batch = bytearray(record_batch([b"hello"]))
    batch[-2] ^= 0xFF  # a value byte: CRC no longer matches
    assert produce_v3(c, existing, 0, bytes(batch))[0] == CORRUPT_MESSAGE
    # A good batch on the same connection still lands right after the seed record.
    assert produce_v3(c, existing, 0, record_batch([b"good"])) == (0, 1)


def test_huge_record_count_with_valid_crc_is_refused(broker, existing):
    # The codec's known abort: a tiny batch claiming i32::MAX records.
    c = Conn(broker.bootstrap)
    assert produce_v3(c, existing, 0, record_batch([b"x"], record_count=0x7FFFFFFF))[0] == CORRUPT_MESSAGE
    assert still_serving(broker)


def test_batch_length_past_the_bytes_sent_is_refused(broker, existing):
    c = Conn(broker.bootstrap)
    batch = record_batch([b"abc"])
    assert produce_v3(c, existing, 0, batch[:-4])[0] == CORRUPT_MESSAGE


def test_oversized_batch_gets_message_too_large(broker, existing):
    c = Conn(broker.bootstrap)
    batch = record_batch([b"x" * 1_100_000])
    assert produce_v3(c, existing, 0, batch)[0] == MESSAGE_TOO_LARGE


def test_unknown_partition(broker, existing):
    c = Conn(broker.bootstrap)
    assert produce_v3(c, existing, 7, record_batch([b"x"]))[0] == UNKNOWN_TOPIC_OR_PARTITION
    assert produce_v3(c, "no-such-topic-xyz", 0, record_batch([b"x"]))[0] == UNKNOWN_TOPIC_OR_PARTITION
