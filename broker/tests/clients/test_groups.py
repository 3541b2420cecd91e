"""Consumer groups with real clients: assignment, rebalancing on join, leave and death,
committed offsets across a broker restart, fan-out, kcat -G and kafkajs."""

import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer

from conftest import Broker, corelog_bin

HERE = Path(__file__).resolve().parent


def create(broker, topic, partitions):
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


def produce(broker, topic, values, partitions):
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 2})
    for i, v in enumerate(values):
        p.produce(topic, value=v.encode(), partition=i % partitions)
    assert p.flush(30) == 0


def member(broker, group, **conf):
    return Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            **conf,
        }
    )


class Tracker:
    """Polls in-process members, commits each message before counting it processed."""

    def __init__(self):
        self.processed = []  # (value, committed?)
        self.members = []

    def poll_all(self, seconds, until=None):
        deadline = time.time() + seconds
        while time.time() < deadline:
            for c in list(self.members):
                m = c.poll(0.05)
                if m is None or m.error():
                    continue
                try:
                    c.commit(message=m, asynchronous=False)
                    ok = True
                except KafkaException:
                    ok = False  # a rebalance took the partition: it may be redelivered
                self.processed.append((m.value().decode(), ok))
            if until is not None and until():
                return True
        return until() if until else True

    def values(self):
        return {v for v, _ in self.processed}

    def assignments(self):
        return [sorted(tp.partition for tp in c.assignment()) for c in self.members]


def disjoint_and_complete(assignments, partitions):
    flat = [p for a in assignments for p in a]
    return sorted(flat) == list(range(partitions))


def test_members_share_partitions_and_rebalance_on_join_leave_and_death(broker, topic):
    group = "g-" + topic
    create(broker, topic, 6)
    t = Tracker()
    t.members = [member(broker, group) for _ in range(3)]
    for c in t.members:
        c.subscribe([topic])
    batch1 = [f"a{i}" for i in range(300)]
    produce(broker, topic, batch1, 6)
    assert t.poll_all(30, lambda: set(batch1) <= t.values()), "first batch not consumed"
    assert t.poll_all(15, lambda: disjoint_and_complete(t.assignments(), 6)), t.assignments()
    assert all(len(a) == 2 for a in t.assignments()), t.assignments()

    # A fourth member joins: the six partitions are spread over four.
    t.members.append(member(broker, group))
    t.members[-1].subscribe([topic])
    assert t.poll_all(30, lambda: disjoint_and_complete(t.assignments(), 6) and all(t.assignments())), t.assignments()
    batch2 = [f"b{i}" for i in range(300)]
    produce(broker, topic, batch2, 6)
    assert t.poll_all(30, lambda: set(batch2) <= t.values())

    # One leaves cleanly.
    leaving = t.members.pop(1)
    leaving.close()
    assert t.poll_all(30, lambda: disjoint_and_complete(t.assignments(), 6)), t.assignments()
    batch3 = [f"c{i}" for i in range(300)]
    produce(broker, topic, batch3, 6)
    assert t.poll_all(30, lambda: set(batch3) <= t.values())

    # One dies without leaving: its session times out and the others take over.
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "group_member.py"), broker.bootstrap, group, topic],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    assert t.poll_all(40, lambda: any(line.startswith("assigned") for line in lines)), "the extra member got nothing"
    batch4 = [f"d{i}" for i in range(300)]
    produce(broker, topic, batch4, 6)
    t.poll_all(2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = time.time()
    assert t.poll_all(40, lambda: disjoint_and_complete(t.assignments(), 6)), t.assignments()
    rebalanced_after = time.time() - killed_at
    # Session timeout (6 s) plus a rejoin round; the bound is generous on purpose.
    assert rebalanced_after < 30, f"rebalance after a member died took {rebalanced_after:.1f} s"
    batch5 = [f"e{i}" for i in range(300)]
    produce(broker, topic, batch5, 6)
    by_dead = {line.strip() for line in lines if not line.startswith("assigned")}
    everything = set(batch1 + batch2 + batch3 + batch4 + batch5)
    assert t.poll_all(40, lambda: everything <= t.values() | by_dead), len(everything - t.values() - by_dead)

    # No message was processed (and committed) by two members.
    committed = [v for v, ok in t.processed if ok]
    assert len(committed) == len(set(committed)), "a committed message was processed twice"
    assert not (set(committed) & by_dead), "a message the dead member committed was processed again"
    for c in t.members:
        c.close()


def test_commit_restart_resume(topic):
    with tempfile.TemporaryDirectory(prefix="corelog-groups-") as d:
        b = Broker(Path(d) / "data").start()
        try:
            group = "resume-" + topic
            create(b, topic, 2)
            values = [f"v{i}" for i in range(100)]
            produce(b, topic, values, 2)
            c = member(b, group)
            c.subscribe([topic])
            seen = []
            deadline = time.time() + 30
            while len(seen) < 40 and time.time() < deadline:
                m = c.poll(0.2)
                if m is not None and not m.error():
                    seen.append(m.value().decode())
                    c.commit(message=m, asynchronous=False)
            c.close()
            assert len(seen) == 40
            assert b.restart(signal.SIGTERM) == 0
            c = member(b, group)
            c.subscribe([topic])
            rest = []
            deadline = time.time() + 30
            while len(seen) + len(rest) < 100 and time.time() < deadline:
                m = c.poll(0.2)
                if m is not None and not m.error():
                    rest.append(m.value().decode())
            c.close()
            assert sorted(seen + rest) == sorted(values), "resumed at the wrong place"
            assert not set(seen) & set(rest)
        finally:
            b.stop(signal.SIGKILL)


def test_two_groups_each_get_every_message_kafka_python(broker, topic):
    create(broker, topic, 3)
    values = [f"m{i}" for i in range(90)]
    produce(broker, topic, values, 3)
    for group in ("fan-a-" + topic, "fan-b-" + topic):
        got = []
        parts = []
        lock = threading.Lock()

        def run():
            # One thread per member, as applications run them (kafka-python drops a
            # join that completes while its poll() is not running).
            c = KafkaConsumer(
                topic,
                bootstrap_servers=broker.bootstrap,
                group_id=group,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
            )
            deadline = time.time() + 40
            while time.time() < deadline:
                with lock:
                    if len(got) >= 90:
                        break
                for records in c.poll(timeout_ms=200).values():
                    with lock:
                        got.extend(r.value.decode() for r in records)
                    c.commit()
            with lock:
                parts.append(sorted(tp.partition for tp in c.assignment()))
            c.close()

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.5)
        for t in threads:
            t.join()
        assert sorted(got) == sorted(values), f"group {group} got {len(got)}"


def test_static_member_returns_to_its_partitions(broker, topic):
    group = "static-" + topic
    create(broker, topic, 4)
    a = member(broker, group, **{"group.instance.id": "a", "session.timeout.ms": 20000})
    b = member(broker, group, **{"group.instance.id": "b", "session.timeout.ms": 20000})
    a.subscribe([topic])
    b.subscribe([topic])
    deadline = time.time() + 30
    while time.time() < deadline:
        a.poll(0.1)
        b.poll(0.1)
        if len(a.assignment()) + len(b.assignment()) == 4 and a.assignment() and b.assignment():
            break
    before_a = sorted(tp.partition for tp in a.assignment())
    before_b = sorted(tp.partition for tp in b.assignment())
    assert sorted(before_a + before_b) == [0, 1, 2, 3]
    b.close()  # a static member does not leave the group on close
    b = member(broker, group, **{"group.instance.id": "b", "session.timeout.ms": 20000})
    b.subscribe([topic])
    deadline = time.time() + 30
    while not b.assignment() and time.time() < deadline:
        a.poll(0.1)
        b.poll(0.1)
    assert sorted(tp.partition for tp in b.assignment()) == before_b
    assert sorted(tp.partition for tp in a.assignment()) == before_a
    a.close()
    b.close()


def test_kcat_balanced_consumer(broker, topic):
    create(broker, topic, 2)
    values = [f"k{i}" for i in range(20)]
    produce(broker, topic, values, 2)
    r = subprocess.run(
        ["kcat", "-b", broker.bootstrap, "-G", "kcat-" + topic, "-o", "beginning", "-e", "-f", "%s\n", topic],
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(r.stdout.decode().split()) == sorted(values)


def test_kafkajs_group_consumer(broker, topic):
    create(broker, topic, 3)
    values = [f"j{i}" for i in range(30)]
    produce(broker, topic, values, 3)
    r = subprocess.run(
        ["node", str(HERE / "kafkajs_group.js"), broker.bootstrap, topic, "js-" + topic, "30"],
        capture_output=True,
        timeout=120,
        cwd=HERE,
    )
    assert r.returncode == 0, r.stderr.decode()
    got = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert sorted(got) == sorted(values)


def test_group_cli_shows_members_offsets_and_lag(broker, topic):
    group = "cli-" + topic
    create(broker, topic, 2)
    produce(broker, topic, [f"x{i}" for i in range(10)], 2)
    c = member(broker, group)
    c.subscribe([topic])
    n = 0
    deadline = time.time() + 30
    while n < 6 and time.time() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            n += 1
            if n <= 6:
                c.commit(message=m, asynchronous=False)
    out = subprocess.run(
        [corelog_bin(), "group", "describe", group, "--bootstrap-server", broker.bootstrap],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "State: Stable" in out.stdout and "Members: 1" in out.stdout
    rows = [l.split() for l in out.stdout.splitlines() if l.startswith(topic)]
    assert len(rows) == 2
    # CURRENT-OFFSET + LAG = LOG-END-OFFSET, and the lags add up to what is unread.
    assert all(int(r[2]) + int(r[4]) == int(r[3]) == 5 for r in rows), rows
    assert sum(int(r[4]) for r in rows) == 4
    listed = subprocess.run(
        [corelog_bin(), "group", "list", "--bootstrap-server", broker.bootstrap],
        capture_output=True, text=True, timeout=60,
    ).stdout
    assert group in listed
    missing = subprocess.run(
        [corelog_bin(), "group", "describe", "no-such-group", "--bootstrap-server", broker.bootstrap],
        capture_output=True, text=True, timeout=60,
    )
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    c.close()


def test_offsets_log_is_compacted_and_keeps_the_latest_commit(topic, tmp_path):
    cfg = tmp_path / "corelog.toml"
    cfg.write_text("offsets_compact_bytes = 65536\n")
    b = Broker(tmp_path / "data", extra_args=["--config", str(cfg)]).start()
    try:
        group = "compact-" + topic
        create(b, topic, 1)
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group, "enable.auto.commit": False})
        for i in range(3000):
            c.commit(offsets=[TopicPartition(topic, 0, i + 1)], asynchronous=False)
        c.close()
        logs = list((tmp_path / "data" / "topics").glob("__consumer_offsets-*/*.log"))
        total = sum(p.stat().st_size for p in logs)
        # 3000 commits are ~400 KB of records; compaction keeps a few segments of 16 KiB.
        assert total < 200_000, f"offsets log not compacted: {total} bytes in {len(logs)} segments"
        assert b.restart(signal.SIGTERM) == 0
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group, "enable.auto.commit": False})
        committed = c.committed([TopicPartition(topic, 0)], timeout=30)
        c.close()
        assert committed[0].offset == 3000
    finally:
        b.stop(signal.SIGKILL)


def test_kafka_python_members_get_disjoint_assignments(broker, topic):
    group = "kp-" + topic
    create(broker, topic, 6)
    values = [f"p{i}" for i in range(600)]
    produce(broker, topic, values, 6)
    lock = threading.Lock()
    got = []
    assignments = {}
    done = threading.Event()

    def settled():
        a = list(assignments.values())
        return len(a) == 3 and all(a) and disjoint_and_complete(a, 6) and len(got) >= 600

    def run(i):
        c = KafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=500,
        )
        deadline = time.time() + 60
        while time.time() < deadline and not done.is_set():
            for records in c.poll(timeout_ms=200).values():
                with lock:
                    got.extend(r.value.decode() for r in records)
                c.commit()
            with lock:
                assignments[i] = sorted(tp.partition for tp in c.assignment())
                if settled():
                    done.set()
        c.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert done.is_set(), f"assignments {assignments}, {len(got)} consumed"
    assert sorted(set(got)) == sorted(values)


def test_every_client_side_assignor_works(broker, topic):
    # The broker only relays assignments: range, roundrobin and cooperative-sticky (an
    # incremental rebalance) all run in the client.
    create(broker, topic, 6)
    for strategy in ("range", "roundrobin", "cooperative-sticky"):
        group = f"{strategy}-{topic}"
        t = Tracker()
        t.members = [member(broker, group, **{"partition.assignment.strategy": strategy}) for _ in range(2)]
        for c in t.members:
            c.subscribe([topic])
        assert t.poll_all(30, lambda: disjoint_and_complete(t.assignments(), 6) and all(t.assignments())), (
            strategy,
            t.assignments(),
        )
        third = member(broker, group, **{"partition.assignment.strategy": strategy})
        third.subscribe([topic])
        t.members.append(third)
        assert t.poll_all(30, lambda: disjoint_and_complete(t.assignments(), 6) and all(t.assignments())), (
            strategy,
            t.assignments(),
        )
        for c in t.members:
            c.close()
