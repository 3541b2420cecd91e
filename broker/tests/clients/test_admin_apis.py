"""Admin APIs clients and tools call: CreatePartitions (librdkafka's admin client) and
DescribeLogDirs (kafka-python's admin client)."""

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic
from kafka.admin import KafkaAdminClient


def test_create_partitions_grows_a_topic_and_the_new_ones_work(broker, topic):
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(topic, num_partitions=2)])[topic].result(10)
    a.create_partitions([NewPartitions(topic, 5)])[topic].result(10)
    assert len(a.list_topics(topic, timeout=10).topics[topic].partitions) == 5
    p = Producer({"bootstrap.servers": broker.bootstrap, "topic.metadata.refresh.interval.ms": 500})
    p.produce(topic, value=b"in-4", partition=4)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "g-" + topic})
    c.assign([TopicPartition(topic, 4, 0)])
    m = None
    for _ in range(40):
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            break
    c.close()
    assert m is not None and m.value() == b"in-4"
    # Shrinking, or staying the same, is INVALID_PARTITIONS; validate_only changes nothing.
    with pytest.raises(KafkaException) as e:
        a.create_partitions([NewPartitions(topic, 3)])[topic].result(10)
    assert "INVALID_PARTITIONS" in str(e.value) or "partitions" in str(e.value).lower()
    a.create_partitions([NewPartitions(topic, 9)], validate_only=True)[topic].result(10)
    assert len(a.list_topics(topic, timeout=10).topics[topic].partitions) == 5


def test_describe_log_dirs_reports_partition_sizes(broker, topic):
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for _ in range(100):
        p.produce(topic, value=b"y" * 1000)
    assert p.flush(30) == 0
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        resp = a.describe_log_dirs()
    finally:
        a.close()
    [broker_entry] = resp
    assert broker_entry["broker"] == 1
    [log_dir] = broker_entry["log_dirs"]
    assert log_dir["error_code"] == 0 and log_dir["log_dir"].endswith("/data")
    assert 0 < log_dir["usable_bytes"] <= log_dir["total_bytes"]
    [t] = [t for t in log_dir["topics"] if t["name"] == topic]
    [part] = t["partitions"]
    assert part["partition_index"] == 0 and part["offset_lag"] == 0
    assert part["partition_size"] >= 100_000, part


def test_list_offsets_max_timestamp_earliest_and_latest(broker, topic):
    """ListOffsets up to v10 through librdkafka's admin list_offsets: MAX_TIMESTAMP finds
    the record with the largest CreateTime, wherever it is in the log."""
    from confluent_kafka.admin import OffsetSpec

    now = int(__import__("time").time() * 1000)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    for i, ts in enumerate([now - 5000, now - 1000, now - 3000, now - 4000]):
        p.produce(topic, value=b"v%d" % i, timestamp=ts)
        p.flush(10)  # one batch each
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    tp = TopicPartition(topic, 0)
    for spec, offset in [(OffsetSpec.max_timestamp(), 1), (OffsetSpec.earliest(), 0),
                         (OffsetSpec.latest(), 4)]:
        got = a.list_offsets({tp: spec})[tp].result(10)
        assert got.offset == offset, (spec, got.offset)
    got = a.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result(10)
    assert got.timestamp == now - 1000
