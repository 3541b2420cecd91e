"""kafka-python against a real corelog broker."""

import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import InvalidTopicError, TopicAlreadyExistsError


def admin(broker):
    return KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30_000)


def consume(broker, topic, partition, offset, count, timeout=30):
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, group_id=None)
    tp = TopicPartition(topic, partition)
    c.assign([tp])
    c.seek(tp, offset)
    out = []
    deadline = time.time() + timeout
    while len(out) < count and time.time() < deadline:
        for records in c.poll(timeout_ms=500).values():
            out.extend(records)
    c.close()
    return out


def test_admin_topics(broker, topic):
    a = admin(broker)
    a.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1, topic_configs={"retention.ms": "60000"})])
    assert topic in a.list_topics()
    with pytest.raises(TopicAlreadyExistsError):
        a.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    with pytest.raises(InvalidTopicError):
        a.create_topics([NewTopic("no spaces allowed", num_partitions=1, replication_factor=1)])
    desc = a.describe_topics([topic])
    assert len(desc[0]["partitions"]) == 4
    cfg = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    assert cfg["topic"][topic]["retention.ms"]["value"] == "60000"
    a.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": "120000"})])
    cfg = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    assert cfg["topic"][topic]["retention.ms"]["value"] == "120000"
    a.delete_topics([topic])
    deadline = time.time() + 10
    while topic in a.list_topics() and time.time() < deadline:
        time.sleep(0.1)
    assert topic not in a.list_topics()
    a.close()


@pytest.mark.parametrize("acks", [0, 1, "all"])
@pytest.mark.parametrize("codec", [None, "gzip", "snappy", "lz4", "zstd"])
def test_produce_and_consume(broker, topic, acks, codec):
    a = admin(broker)
    a.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    a.close()
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, acks=acks, compression_type=codec, linger_ms=5)
    futures = [
        p.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), headers=[("h", f"{i}".encode())], timestamp_ms=1_700_000_000_000 + i)
        for i in range(30)
    ]
    p.flush(timeout=30)
    metas = [f.get(timeout=30) for f in futures]
    if acks != 0:
        assert [m.offset for m in metas] == list(range(30))
    p.close()
    got = consume(broker, topic, 0, 0, 30)
    assert [(r.key, r.value) for r in got] == [(f"k{i}".encode(), f"v{i}".encode()) for i in range(30)]
    assert got[7].headers == [("h", b"7")]
    assert [r.timestamp for r in got] == [1_700_000_000_000 + i for i in range(30)]
    assert [r.offset for r in got] == list(range(30))


def test_idempotent_producer(broker, topic):
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=True, acks="all")
    futures = [p.send(topic, value=f"{i}".encode()) for i in range(100)]
    p.flush(timeout=30)
    assert [f.get(timeout=30).offset for f in futures] == list(range(100))
    p.close()
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None)
    tp = TopicPartition(topic, 0)
    assert c.end_offsets([tp])[tp] == 100
    c.close()


def test_offsets_earliest_latest_and_by_time(broker, topic):
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    base = 1_650_000_000_000
    for i in range(10):
        p.send(topic, value=f"m{i}".encode(), timestamp_ms=base + 1000 * i).get(timeout=30)
    p.close()
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None)
    tp = TopicPartition(topic, 0)
    assert c.beginning_offsets([tp])[tp] == 0
    assert c.end_offsets([tp])[tp] == 10
    found = c.offsets_for_times({tp: base + 3000})
    assert found[tp].offset == 3 and found[tp].timestamp == base + 3000
    assert c.offsets_for_times({tp: base + 60_000})[tp] is None
    c.close()
    got = consume(broker, topic, 0, 6, 4)
    assert [r.value for r in got] == [b"m6", b"m7", b"m8", b"m9"]
