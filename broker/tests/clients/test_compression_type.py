"""The topic config compression.type as Kafka applies it: `producer` keeps batches as sent;
a codec (or `uncompressed`) makes the broker recompress every batch in another codec
before it is stored. Checked on the stored segment bytes, and by two consumers with their
own decoders (librdkafka's, and kafka-python's pure-Python framing of snappy and lz4)."""

import os
import struct
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry,
                                   ConfigResource, NewTopic)
from kafka import KafkaConsumer, TopicPartition as KTP

CODEC = {"uncompressed": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4, "none": 0}


def stored_codecs(broker, topic):
    """The codec of every batch in partition 0's segment files, in log order."""
    d = os.path.join(broker.data_dir, "topics", f"{topic}-0")
    codecs = []
    for name in sorted(n for n in os.listdir(d) if n.endswith(".log")):
        data = open(os.path.join(d, name), "rb").read()
        at = 0
        while at + 23 <= len(data):
            length = struct.unpack(">i", data[at + 8:at + 12])[0]
            if length <= 0:
                break  # zero padding after the last batch
            codecs.append(struct.unpack(">h", data[at + 21:at + 23])[0] & 7)
            at += 12 + length
    return codecs


def values(n, tag):
    # Repetitive enough for every codec to shrink it.
    return [(f"{tag}-{i}-".encode() + b"abcdefgh" * 64) for i in range(n)]


def produce(broker, topic, vals, codec):
    p = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": codec,
                  "linger.ms": 20, "batch.num.messages": 50})
    for v in vals:
        p.produce(topic, value=v, partition=0)
    assert p.flush(30) == 0


def read_librdkafka(broker, topic, count):
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "g-" + topic,
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    out, deadline = [], time.time() + 30
    try:
        while len(out) < count and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None:
                assert m.error() is None, m.error()
                out.append(m.value())
    finally:
        c.close()
    return out


def read_kafka_python(broker, topic, count):
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False)
    tp = KTP(topic, 0)
    c.assign([tp])
    c.seek(tp, 0)
    out, deadline = [], time.time() + 30
    try:
        while len(out) < count and time.time() < deadline:
            for records in c.poll(timeout_ms=500).values():
                out.extend(r.value for r in records)
    finally:
        c.close()
    return out


@pytest.mark.parametrize("target,sent", [
    ("zstd", "none"), ("gzip", "none"), ("snappy", "none"), ("lz4", "none"),
    ("uncompressed", "gzip"), ("zstd", "lz4"), ("lz4", "lz4"),
])
def test_a_codec_recompresses_what_differs(broker, topic, target, sent):
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(topic, num_partitions=1, config={"compression.type": target})])[topic].result(10)
    vals = values(300, target)
    produce(broker, topic, vals, sent)
    codecs = stored_codecs(broker, topic)
    assert codecs and set(codecs) == {CODEC[target]}, codecs
    assert read_librdkafka(broker, topic, len(vals)) == vals
    assert read_kafka_python(broker, topic, len(vals)) == vals


def test_producer_keeps_batches_as_sent_and_a_change_applies_to_new_batches(broker, topic):
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(10)
    first = values(100, "first")
    produce(broker, topic, first, "lz4")
    assert set(stored_codecs(broker, topic)) == {CODEC["lz4"]}
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("compression.type", "zstd", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("compression.zstd.level", "9", incremental_operation=AlterConfigOpType.SET)])
    a.incremental_alter_configs([res])[res].result(10)
    before = len(stored_codecs(broker, topic))
    second = values(100, "second")
    produce(broker, topic, second, "lz4")
    codecs = stored_codecs(broker, topic)
    assert set(codecs[:before]) == {CODEC["lz4"]} and set(codecs[before:]) == {CODEC["zstd"]}, codecs
    assert read_librdkafka(broker, topic, 200) == first + second
    # Out-of-range levels are INVALID_CONFIG, as in Kafka.
    bad = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("compression.gzip.level", "12", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(Exception) as e:
        a.incremental_alter_configs([bad])[bad].result(10)
    assert "INVALID_CONFIG" in str(e.value) or "gzip.level" in str(e.value)


def test_recompression_keeps_idempotent_retries_exact(broker, topic):
    """A recompressed batch keeps its producer id and sequence: the same batch sent again
    (a producer's retry) answers its original offset and is not stored twice, and the
    next sequence is accepted."""
    from rawkafka import Conn, init_producer_id, produce_v3, record_batch

    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(topic, num_partitions=1, config={"compression.type": "gzip"})])[topic].result(10)
    c = Conn(broker.bootstrap)
    try:
        pid, epoch = init_producer_id(c)
        now = int(time.time() * 1000)
        first = record_batch([b"a" * 500, b"b" * 500], pid, epoch, 0, timestamp=now)
        assert produce_v3(c, topic, 0, first) == (0, 0)
        assert produce_v3(c, topic, 0, first) == (0, 0)  # the retry
        nxt = record_batch([b"c" * 500], pid, epoch, 2, timestamp=now)
        assert produce_v3(c, topic, 0, nxt) == (0, 2)
    finally:
        c.close()
    assert stored_codecs(broker, topic) == [CODEC["gzip"], CODEC["gzip"]]
    assert read_librdkafka(broker, topic, 3) == [b"a" * 500, b"b" * 500, b"c" * 500]
