"""A broker restart, graceful or a crash, loses nothing that was acknowledged."""

import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from conftest import Broker
from rawkafka import Conn, init_producer_id, produce_v3, record_batch


@pytest.fixture
def fresh():
    with tempfile.TemporaryDirectory(prefix="corelog-restart-") as d:
        b = Broker(Path(d) / "data").start()
        yield b
        b.stop(signal.SIGKILL)


def read_all(broker, topic, partitions, timeout=60):
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "restart-check",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = {}
    eof = set()
    deadline = time.time() + timeout
    while len(eof) < partitions and time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                eof.add(m.partition())
            continue
        eof.discard(m.partition())
        got[(m.partition(), m.offset())] = m.value()
    c.close()
    return got


def test_graceful_restart_keeps_topics_configs_and_records(fresh, topic):
    a = AdminClient({"bootstrap.servers": fresh.bootstrap})
    a.create_topics([NewTopic(topic, 3, 1, config={"retention.ms": "86400000"})])[topic].result(30)
    p = Producer({"bootstrap.servers": fresh.bootstrap, "acks": "all", "linger.ms": 2})
    acked = {}
    for i in range(1000):
        p.produce(topic, value=f"m{i}".encode(), partition=i % 3,
                  on_delivery=lambda err, m: err is None and acked.__setitem__((m.partition(), m.offset()), m.value()))
    assert p.flush(30) == 0
    assert len(acked) == 1000
    assert fresh.restart(signal.SIGTERM) == 0, fresh.log()
    assert read_all(fresh, topic, 3) == acked
    a = AdminClient({"bootstrap.servers": fresh.bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    assert a.describe_configs([res])[res].result(30)["retention.ms"].value == "86400000"
    # Offsets continue where they were.
    p = Producer({"bootstrap.servers": fresh.bootstrap, "acks": "all"})
    reports = []
    p.produce(topic, value=b"after", partition=0, on_delivery=lambda err, m: reports.append((err, m)))
    p.flush(30)
    assert reports[0][0] is None and reports[0][1].offset() == 334


def test_crash_mid_stream_loses_no_acknowledged_record(fresh, topic):
    a = AdminClient({"bootstrap.servers": fresh.bootstrap})
    a.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    acked = {}
    stop = threading.Event()

    def produce():
        p = Producer({"bootstrap.servers": fresh.bootstrap, "acks": "all", "linger.ms": 1,
                      "message.timeout.ms": 5000, "retries": 0})
        i = 0
        while not stop.is_set():
            try:
                p.produce(topic, value=f"v{i}".encode(), partition=i % 2,
                          on_delivery=lambda err, m: err is None and acked.__setitem__((m.partition(), m.offset()), m.value()))
            except BufferError:
                pass
            p.poll(0)
            i += 1
            if i % 100 == 0:
                time.sleep(0.001)
        p.flush(10)

    t = threading.Thread(target=produce)
    t.start()
    time.sleep(2.0)
    fresh.kill()  # SIGKILL while appends and syncs are in flight
    stop.set()
    t.join()
    before = dict(acked)
    assert len(before) > 100, "too little was acknowledged to test anything"
    fresh.start()
    stored = read_all(fresh, topic, 2)
    missing = [k for k in before if stored.get(k) != before[k]]
    assert not missing, f"{len(missing)} acknowledged records lost or changed, e.g. {missing[:5]}"


def test_idempotent_producer_state_survives_restart(fresh, topic):
    p = Producer({"bootstrap.servers": fresh.bootstrap})
    p.produce(topic, value=b"create")
    p.flush(30)
    c = Conn(fresh.bootstrap)
    pid, epoch = init_producer_id(c)
    first = record_batch([b"a", b"b"], producer_id=pid, producer_epoch=epoch, base_sequence=0)
    assert produce_v3(c, topic, 0, first) == (0, 1)
    c.close()
    assert fresh.restart(signal.SIGKILL) is not None
    c = Conn(fresh.bootstrap)
    # The retry of a batch acknowledged before the crash is recognised, not stored twice.
    assert produce_v3(c, topic, 0, first) == (0, 1)
    nxt = record_batch([b"c"], producer_id=pid, producer_epoch=epoch, base_sequence=2)
    assert produce_v3(c, topic, 0, nxt) == (0, 3)
    gap = record_batch([b"d"], producer_id=pid, producer_epoch=epoch, base_sequence=9)
    assert produce_v3(c, topic, 0, gap)[0] == 45  # OUT_OF_ORDER_SEQUENCE_NUMBER
    # A new producer id never collides with one handed out before the restart.
    assert init_producer_id(c)[0] != pid
