"""confluent-kafka (librdkafka) against a real corelog broker."""

import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    OffsetSpec,
)


def admin(broker):
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def create(broker, name, partitions=1, config=None):
    a = admin(broker)
    fs = a.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=30,
    )
    fs[name].result(timeout=30)


def produce_all(broker, topic, messages, **conf):
    """Produces (key, value, headers, timestamp, partition) tuples; returns delivery reports."""
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, **conf})
    reports = []

    def on_delivery(err, msg):
        reports.append((err, msg))

    for key, value, headers, ts, part in messages:
        kwargs = {"key": key, "value": value, "on_delivery": on_delivery}
        if headers is not None:
            kwargs["headers"] = headers
        if ts is not None:
            kwargs["timestamp"] = ts
        if part is not None:
            kwargs["partition"] = part
        p.produce(topic, **kwargs)
    assert p.flush(30) == 0, "messages still in flight after 30 s"
    return reports


def consumer(broker, **conf):
    return Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "unused-assign-only",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **conf,
        }
    )


def read(broker, topic, partition, offset, count, timeout=30):
    c = consumer(broker)
    c.assign([TopicPartition(topic, partition, offset)])
    out = []
    deadline = time.time() + timeout
    while len(out) < count and time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise KafkaException(m.error())
        out.append(m)
    c.close()
    return out


def test_admin_create_list_describe_alter_delete(broker, topic):
    a = admin(broker)
    create(broker, topic, partitions=3, config={"retention.ms": "3600000"})
    md = a.list_topics(timeout=10)
    assert topic in md.topics
    assert len(md.topics[topic].partitions) == 3
    assert md.topics[topic].partitions[0].leader == 1

    # Creating it again is refused with TOPIC_ALREADY_EXISTS.
    fs = a.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    with pytest.raises(KafkaException) as e:
        fs[topic].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS

    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = a.describe_configs([res])[res].result(timeout=30)
    assert configs["retention.ms"].value == "3600000"
    assert configs["cleanup.policy"].value == "delete"

    change = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("retention.bytes", "1048576", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
        ],
    )
    a.incremental_alter_configs([change])[change].result(timeout=30)
    configs = a.describe_configs([res])[res].result(timeout=30)
    assert configs["retention.bytes"].value == "1048576"
    assert configs["retention.ms"].value == str(7 * 24 * 3600 * 1000)

    a.delete_topics([topic], operation_timeout=30)[topic].result(timeout=30)
    deadline = time.time() + 10
    while topic in a.list_topics(timeout=10).topics and time.time() < deadline:
        time.sleep(0.1)
    assert topic not in a.list_topics(timeout=10).topics


def test_invalid_topic_name_and_bad_replication_factor(broker):
    a = admin(broker)
    fs = a.create_topics([NewTopic("bad/name", num_partitions=1, replication_factor=1)])
    with pytest.raises(KafkaException) as e:
        fs["bad/name"].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.TOPIC_EXCEPTION
    fs = a.create_topics([NewTopic("rf3", num_partitions=1, replication_factor=3)])
    with pytest.raises(KafkaException) as e:
        fs["rf3"].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR


def test_cluster_description(broker):
    a = admin(broker)
    d = a.describe_cluster().result(timeout=30)
    assert d.controller.id == 1
    assert [n.port for n in d.nodes] == [broker.port]


@pytest.mark.parametrize("acks", ["all", "1", "0"])
def test_keys_headers_timestamps_round_trip(broker, topic, acks):
    create(broker, topic, partitions=2)
    msgs = [
        (f"key-{i}".encode(), f"value-{i}".encode(), [("h1", f"x{i}".encode()), ("h2", None)], 1_700_000_000_000 + i, i % 2)
        for i in range(50)
    ]
    reports = produce_all(broker, topic, msgs, acks=acks)
    assert all(err is None for err, _ in reports), [err for err, _ in reports if err]
    for part in (0, 1):
        got = read(broker, topic, part, 0, 25)
        want = [m for m in msgs if m[4] == part]
        assert [(m.key(), m.value()) for m in got] == [(k, v) for k, v, *_ in want]
        assert [m.offset() for m in got] == list(range(25))
        assert got[3].headers() == [("h1", want[3][2][0][1]), ("h2", None)]
        assert [m.timestamp()[1] for m in got] == [w[3] for w in want]
    if acks != "0":
        # Delivery reports carry the offsets the broker assigned.
        offsets = sorted((m.partition(), m.offset()) for _, m in reports)
        assert offsets == sorted([(0, i) for i in range(25)] + [(1, i) for i in range(25)])


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_are_stored_and_served(broker, topic, codec):
    create(broker, topic)
    msgs = [(None, (f"{codec}-{i}-" + "x" * 200).encode(), None, None, 0) for i in range(200)]
    reports = produce_all(broker, topic, msgs, **{"compression.type": codec, "linger.ms": 50})
    assert all(err is None for err, _ in reports)
    got = read(broker, topic, 0, 0, 200)
    assert [m.value() for m in got] == [v for _, v, *_ in msgs]


def test_idempotent_producer(broker, topic):
    create(broker, topic, partitions=3)
    msgs = [(str(i).encode(), str(i).encode(), None, None, None) for i in range(300)]
    reports = produce_all(
        broker, topic, msgs, **{"enable.idempotence": True, "max.in.flight.requests.per.connection": 5}
    )
    assert all(err is None for err, _ in reports)
    total = 0
    for p in range(3):
        lo, hi = consumer(broker).get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        assert lo == 0
        total += hi
    assert total == 300, "every message stored exactly once"


def test_consume_from_earliest_latest_and_offset(broker, topic):
    create(broker, topic)
    produce_all(broker, topic, [(None, f"m{i}".encode(), None, None, 0) for i in range(20)])
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

    assert [m.value() for m in read(broker, topic, 0, OFFSET_BEGINNING, 20)][0] == b"m0"
    assert [m.value() for m in read(broker, topic, 0, 15, 5)] == [f"m{i}".encode() for i in range(15, 20)]
    # From the end: only what is produced afterwards.
    c = consumer(broker)
    c.assign([TopicPartition(topic, 0, OFFSET_END)])
    deadline = time.time() + 10
    eof = False
    while not eof and time.time() < deadline:
        m = c.poll(0.5)
        eof = m is not None and m.error() and m.error().code() == KafkaError._PARTITION_EOF
    produce_all(broker, topic, [(None, b"after", None, None, 0)])
    got = None
    deadline = time.time() + 30
    while got is None and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got = m
    c.close()
    assert got is not None and got.value() == b"after" and got.offset() == 20


def test_list_offsets_by_time(broker, topic):
    create(broker, topic)
    base = 1_600_000_000_000
    msgs = [(None, f"m{i}".encode(), None, base + i * 1000, 0) for i in range(10)]
    produce_all(broker, topic, msgs, **{"linger.ms": 0})
    a = admin(broker)
    tp = TopicPartition(topic, 0)
    res = a.list_offsets({tp: OffsetSpec.for_timestamp(base + 4500)})[tp].result(timeout=30)
    assert res.offset == 5
    res = a.list_offsets({tp: OffsetSpec.earliest()})[tp].result(timeout=30)
    assert res.offset == 0
    res = a.list_offsets({tp: OffsetSpec.latest()})[tp].result(timeout=30)
    assert res.offset == 10
    # The consumer API asks the same question.
    found = consumer(broker).offsets_for_times([TopicPartition(topic, 0, base + 7000)], timeout=10)
    assert found[0].offset == 7
    past_end = consumer(broker).offsets_for_times([TopicPartition(topic, 0, base + 99_000)], timeout=10)
    assert past_end[0].offset == -1


def test_long_poll_fetch_wakes_on_new_data(broker, topic):
    create(broker, topic)
    c = consumer(broker, **{"fetch.wait.max.ms": 10_000, "fetch.min.bytes": 1})
    c.assign([TopicPartition(topic, 0, 0)])
    # Let the consumer park its fetch at the end of the empty log.
    time.sleep(1.0)
    sent = {}

    def later():
        time.sleep(0.5)
        sent["t"] = time.time()
        produce_all(broker, topic, [(None, b"wake", None, None, 0)])

    threading.Thread(target=later).start()
    got = None
    deadline = time.time() + 30
    while got is None and time.time() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            got = (m.value(), time.time())
    c.close()
    assert got is not None and got[0] == b"wake"
    # A fetch that only answered at its 10 s max wait would arrive much later than this.
    assert got[1] - sent["t"] < 5.0, "the parked fetch did not wake on new data"


def test_message_too_large_is_refused_and_others_still_served(broker, topic):
    create(broker, topic, config={"max.message.bytes": "10000"})
    p = Producer({"bootstrap.servers": broker.bootstrap, "message.max.bytes": 2_000_000})
    errors = []
    p.produce(topic, value=b"x" * 50_000, on_delivery=lambda err, m: errors.append(err))
    p.flush(30)
    assert errors and errors[0] is not None
    assert errors[0].code() == KafkaError.MSG_SIZE_TOO_LARGE
    reports = produce_all(broker, topic, [(None, b"small", None, None, 0)])
    assert reports[0][0] is None and reports[0][1].offset() == 0


def test_unknown_topic_without_auto_create(broker, topic):
    p = Producer({"bootstrap.servers": broker.bootstrap, "allow.auto.create.topics": False, "message.timeout.ms": 3000})
    errors = []
    p.produce(topic, value=b"x", on_delivery=lambda err, m: errors.append(err))
    p.flush(10)
    assert errors and errors[0] is not None
    assert errors[0].code() in (KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._MSG_TIMED_OUT)
    assert topic not in admin(broker).list_topics(timeout=10).topics


def test_auto_create_on_produce(broker, topic):
    reports = produce_all(broker, topic, [(b"k", b"v", None, None, None)])
    assert reports[0][0] is None
    assert topic in admin(broker).list_topics(timeout=10).topics
