"""Consumer-group rules other clients' suites rely on, with librdkafka (confluent-kafka):
commits during a rebalance's PreparingRebalance phase are accepted, and a replaced static
member is fenced (FENCED_INSTANCE_ID) instead of being told it is unknown."""

import threading
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def make_topic(broker, topic, partitions):
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in a.create_topics([NewTopic(topic, num_partitions=partitions)]).values():
        f.result(30)


def fill(broker, topic, n, partitions):
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(n):
        p.produce(topic, value=str(i).encode(), partition=i % partitions)
    assert p.flush(30) == 0


def test_commit_in_revoke_callback_during_rebalance_is_accepted(broker, topic):
    make_topic(broker, topic, 4)
    fill(broker, topic, 400, 4)
    group = "g-" + topic
    outcomes = []
    consumed = {}

    def on_revoke(consumer, partitions):
        # What applications do: commit what was processed before giving partitions up.
        offsets = [TopicPartition(topic, p, consumed[p] + 1) for p in consumed]
        if not offsets:
            return
        try:
            res = consumer.commit(offsets=offsets, asynchronous=False)
            outcomes.append(("ok", [(t.partition, t.offset, t.error) for t in res]))
        except Exception as e:  # a KafkaException carries the broker's error
            outcomes.append(("error", str(e)))

    c1 = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                   "enable.auto.commit": False, "auto.offset.reset": "earliest",
                   "session.timeout.ms": 10000, "partition.assignment.strategy": "range"})
    c1.subscribe([topic], on_revoke=on_revoke)
    deadline = time.time() + 30
    while len(consumed) < 4 and time.time() < deadline:
        m = c1.poll(0.5)
        if m is not None and m.error() is None:
            consumed[m.partition()] = m.offset()
    assert len(consumed) == 4, consumed

    # A second member joins: c1 is asked to rejoin and revokes in its callback.
    c2 = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                   "enable.auto.commit": False, "auto.offset.reset": "earliest",
                   "session.timeout.ms": 10000, "partition.assignment.strategy": "range"})
    c2.subscribe([topic])
    stop = threading.Event()
    t = threading.Thread(target=lambda: [c2.poll(0.2) for _ in iter(stop.is_set, True)])
    t.start()
    try:
        deadline = time.time() + 30
        while not outcomes and time.time() < deadline:
            c1.poll(0.2)
    finally:
        stop.set()
        t.join()
    assert outcomes, "the revoke callback never ran"
    kind, detail = outcomes[0]
    assert kind == "ok", f"commit in the revoke callback failed: {detail}"
    assert all(err is None for _, _, err in detail), detail
    committed = c1.committed([TopicPartition(topic, p) for p in range(4)], timeout=10)
    got = {tp.partition: tp.offset for tp in committed}
    for p, off in consumed.items():
        assert got[p] == off + 1, (got, consumed)
    c1.close()
    c2.close()


def test_replaced_static_member_is_fenced(broker, topic):
    make_topic(broker, topic, 1)
    group = "g-" + topic
    errors = []
    conf = {"bootstrap.servers": broker.bootstrap, "group.id": group,
            "group.instance.id": "instance-1", "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 500, "auto.offset.reset": "earliest"}
    old = Consumer(dict(conf, error_cb=errors.append))
    old.subscribe([topic])
    deadline = time.time() + 20
    while not old.assignment() and time.time() < deadline:
        old.poll(0.2)
    assert old.assignment(), "the first static member got no assignment"

    new = Consumer(conf)
    new.subscribe([topic])
    fenced = None
    deadline = time.time() + 30
    while fenced is None and time.time() < deadline:
        new.poll(0.1)
        try:
            m = old.poll(0.1)
        except Exception as e:  # librdkafka raises the fatal error from poll
            fenced = str(e)
            break
        if m is not None and m.error() is not None:
            errors.append(m.error())
        for e in errors:
            if e.fatal() or e.code() == KafkaError.FENCED_INSTANCE_ID or "fenced" in e.str().lower():
                fenced = e.str()
    assert fenced is not None, f"the replaced static member was never fenced: {errors}"
    assert "fenced" in fenced.lower() or "FENCED_INSTANCE_ID" in fenced, fenced
    # The new member owns the partition.
    deadline = time.time() + 20
    while not new.assignment() and time.time() < deadline:
        new.poll(0.2)
    assert new.assignment()
    new.close()
    try:
        old.close()
    except Exception:
        pass
