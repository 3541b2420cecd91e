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


def _values(bootstrap, topic, start_offset=None, count=None, timeout=20):
    """(offset, value) of what a consumer reads from `start_offset` (or from the reset
    point, earliest), until `count` or a quiet second."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "g-" + topic,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    if start_offset is None:
        c.subscribe([topic])
    else:
        c.assign([TopicPartition(topic, 0, start_offset)])
    got, deadline, quiet = [], __import__("time").time() + timeout, 0
    try:
        while __import__("time").time() < deadline and (count is None or len(got) < count):
            m = c.poll(0.5)
            if m is None:
                quiet += 1
                if count is None and got and quiet > 2:
                    break
                continue
            quiet = 0
            if m.error() is None:
                got.append((m.offset(), m.value()))
    finally:
        c.close()
    return got


def test_delete_records_moves_the_log_start_durably(tmp_path):
    """DeleteRecords through librdkafka's and kafka-python's admin clients: the low
    watermark is the new log start, inside a batch; consumers start there; it survives a
    SIGKILL; past the high watermark is OFFSET_OUT_OF_RANGE; -1 means the high watermark."""
    from confluent_kafka.admin import OffsetSpec
    from kafka import TopicPartition as KTP
    from conftest import Broker

    b = Broker(tmp_path / "data").start()
    try:
        topic = "deleted-prefix"
        p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 5})
        for batch in range(10):
            for i in range(10):
                p.produce(topic, value=b"v%d" % (batch * 10 + i), partition=0)
            p.flush(10)  # ten batches of ten
        a = AdminClient({"bootstrap.servers": b.bootstrap})
        tp = TopicPartition(topic, 0, 37)
        [res] = a.delete_records([tp]).values()
        assert res.result(10).low_watermark == 37
        tp0 = TopicPartition(topic, 0)
        assert a.list_offsets({tp0: OffsetSpec.earliest()})[tp0].result(10).offset == 37
        got = _values(b.bootstrap, topic, count=63)
        assert [o for o, _ in got] == list(range(37, 100))
        assert got[0][1] == b"v37"
        # Asking for an offset below the start resets to it (auto.offset.reset=earliest).
        assert _values(b.bootstrap, topic, start_offset=5, count=1)[0][0] == 37
        # Backwards is a no-op answering the current start.
        [res] = a.delete_records([TopicPartition(topic, 0, 10)]).values()
        assert res.result(10).low_watermark == 37

        b.kill()
        b.start()
        a = AdminClient({"bootstrap.servers": b.bootstrap})
        assert a.list_offsets({tp0: OffsetSpec.earliest()})[tp0].result(10).offset == 37
        assert [o for o, _ in _values(b.bootstrap, topic, count=63)] == list(range(37, 100))

        k = KafkaAdminClient(bootstrap_servers=b.bootstrap)
        try:
            with pytest.raises(Exception) as e:
                k.delete_records({KTP(topic, 0): 101})
            assert "OffsetOutOfRange" in type(e.value).__name__ or "OFFSET_OUT_OF_RANGE" in str(e.value).upper() \
                or "OutOfRange" in repr(e.value), repr(e.value)
            r = k.delete_records({KTP(topic, 0): -1})
            [(tpk, meta)] = list(r.items())
            assert meta["low_watermark"] == 100, r
        finally:
            k.close()
        assert a.list_offsets({tp0: OffsetSpec.earliest()})[tp0].result(10).offset == 100
        # Writes go on from the end; the new record is the first one readable.
        p = Producer({"bootstrap.servers": b.bootstrap})
        p.produce(topic, value=b"after", partition=0)
        assert p.flush(10) == 0
        assert _values(b.bootstrap, topic, count=1) == [(100, b"after")]
    finally:
        b.stop()


def test_describe_producers_lists_idempotent_producers(broker, topic):
    from kafka import TopicPartition as KTP

    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(topic, num_partitions=2)])[topic].result(10)
    before = int(__import__("time").time() * 1000)
    p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "linger.ms": 0})
    for i in range(5):
        p.produce(topic, value=b"i%d" % i, partition=0)
        p.flush(10)
    k = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        r = k.describe_producers([KTP(topic, 0), KTP(topic, 1)])
    finally:
        k.close()
    [state] = r[KTP(topic, 0)].active_producers
    assert state.producer_id >= 0 and state.producer_epoch == 0
    assert state.last_sequence == 4, state
    assert before - 1000 <= state.last_timestamp <= before + 60_000, state
    assert state.coordinator_epoch == -1 and state.current_transaction_start_offset == -1
    assert r[KTP(topic, 1)].active_producers == []


def test_describe_topic_partitions_pages_with_a_cursor(broker):
    """kafka-python's describe_topic_partitions (KIP-966): sorted topics, pages of at most
    the limit, and a cursor that walks every partition exactly once."""
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    names = ["dtp-b", "dtp-a", "dtp-c"]
    for n, count in zip(names, [3, 2, 1]):
        a.create_topics([NewTopic(n, num_partitions=count)])[n].result(10)
    k = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        seen, cursor, pages, missing = [], None, 0, 0
        while True:
            r = k.describe_topic_partitions(names + ["dtp-missing"], response_partition_limit=2, cursor=cursor)
            pages += 1
            assert sum(len(t["partitions"]) for t in r["topics"]) <= 2
            for t in r["topics"]:
                if t["name"] == "dtp-missing":
                    assert t["error_code"] == 3  # UNKNOWN_TOPIC_OR_PARTITION
                    missing += 1
                    continue
                assert t["error_code"] == 0 and not t["is_internal"]
                for part in t["partitions"]:
                    assert part["leader_id"] == 1 and part["replica_nodes"] == [1] and part["isr_nodes"] == [1]
                    seen.append((t["name"], part["partition_index"]))
            cursor = r["next_cursor"]
            if cursor is None:
                break
            assert pages < 10
        assert seen == [("dtp-a", 0), ("dtp-a", 1), ("dtp-b", 0), ("dtp-b", 1), ("dtp-b", 2), ("dtp-c", 0)]
        # As in Kafka, a page that fills up points at the next topic, here the missing one,
        # which gets a page of its own.
        assert pages == 4 and missing == 1
        # Listing all topics, a cursor on a topic that no longer exists starts the page at
        # the next topic by name, from its first partition.
        r = k.describe_topic_partitions([], response_partition_limit=3,
                                        cursor={"topic_name": "dtp-b0", "partition_index": 2})
        got = [t["name"] for t in r["topics"]]
        assert got and got == sorted(got) and got[0] > "dtp-b0", got
        assert r["topics"][0]["partitions"][0]["partition_index"] == 0
    finally:
        k.close()
