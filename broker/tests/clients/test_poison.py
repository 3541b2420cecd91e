"""A producer cannot poison a partition: a batch with a valid CRC over records that do
not parse (per codec, and a truncated gzip stream) is refused with INVALID_RECORD and takes
no offset; consumers read past the place it was sent."""

import gzip
import os
import time

import lz4.frame
import pytest
import snappy
import zstandard
from confluent_kafka import Consumer, Producer
from rawkafka import Conn, produce_v3, raw_batch, records_payload

INVALID_RECORD = 87
INVALID_TIMESTAMP = 32
CODECS = {
    "gzip": (1, gzip.compress),
    "snappy": (2, snappy.compress),
    "lz4": (3, lz4.frame.compress),
    "zstd": (4, lambda b: zstandard.ZstdCompressor().compress(b)),
}


def poisons():
    garbage = os.urandom(200)
    good = records_payload([b"a", b"b", b"c"])
    out = [("none-garbage", raw_batch(garbage, 3))]
    # A key length that runs past its record, uncompressed.
    bad_record = bytearray(good)
    bad_record[4] = 0x7E
    out.append(("none-bad-key-length", raw_batch(bytes(bad_record), 3)))
    # Records numbered wrong (offset deltas 0, 1, 1).
    out.append(("none-offset-delta", raw_batch(records_payload([b"a", b"b"]) + records_payload([b"c"])[:0] + records_payload([b"x", b"y"])[-7:], 3)))
    for name, (codec, compress) in CODECS.items():
        out.append((f"{name}-garbage", raw_batch(garbage, 3, codec)))
        out.append((f"{name}-garbage-compressed", raw_batch(compress(garbage), 3, codec)))
        out.append((f"{name}-too-few-records", raw_batch(compress(records_payload([b"a"])), 3, codec)))
    whole = gzip.compress(good)
    out.append(("gzip-truncated", raw_batch(whole[: len(whole) // 2], 3, 1)))
    return out


@pytest.mark.parametrize("name,batch", poisons(), ids=[n for n, _ in poisons()])
def test_poison_batch_is_refused_and_consumers_read_past_it(broker, topic, name, batch):
    p = Producer({"bootstrap.servers": broker.bootstrap})
    p.produce(topic, value=b"before")
    assert p.flush(30) == 0
    c = Conn(broker.bootstrap)
    error, base = produce_v3(c, topic, 0, batch)
    c.close()
    assert error == INVALID_RECORD, f"{name}: error {error}, base offset {base}"
    p.produce(topic, value=b"after")
    assert p.flush(30) == 0

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "g-" + topic,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got = []
    deadline = time.time() + 30
    while len(got) < 2 and time.time() < deadline:
        m = consumer.poll(0.5)
        if m is None:
            continue
        assert m.error() is None, f"{name}: consumer error {m.error()}"
        got.append((m.offset(), m.value()))
    consumer.close()
    # Nothing took an offset between the two good records.
    assert got == [(0, b"before"), (1, b"after")], got


@pytest.mark.parametrize("name", sorted(CODECS))
def test_valid_compressed_batches_are_stored_as_sent(broker, topic, name):
    codec, compress = CODECS[name]
    values = [b"v%d" % i for i in range(50)]
    p = Producer({"bootstrap.servers": broker.bootstrap})
    p.produce(topic, value=b"seed")
    assert p.flush(30) == 0
    c = Conn(broker.bootstrap)
    error, base = produce_v3(c, topic, 0, raw_batch(compress(records_payload(values)), 50, codec))
    c.close()
    assert (error, base) == (0, 1)
    values.insert(0, b"seed")
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "g-" + topic,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got = []
    deadline = time.time() + 30
    while len(got) < 51 and time.time() < deadline:
        m = consumer.poll(0.5)
        if m is not None and m.error() is None:
            got.append(m.value())
    consumer.close()
    assert got == values


def test_timestamps_outside_the_window_are_refused(broker, topic):
    p = Producer({"bootstrap.servers": broker.bootstrap})
    p.produce(topic, value=b"seed")
    assert p.flush(30) == 0
    year_2500 = 16_725_225_600_000
    c = Conn(broker.bootstrap)
    assert produce_v3(c, topic, 0, raw_batch(records_payload([b"x"]), 1, 0, year_2500))[0] == INVALID_TIMESTAMP
    now = int(time.time() * 1000)
    assert produce_v3(c, topic, 0, raw_batch(records_payload([b"x"]), 1, 0, now + 60_000))[0] == 0
    c.close()
