"""A three-broker corelog cluster with real clients: replicated topics, failover of a
killed, paused or cut-off leader under an idempotent acks=all producer, a killed group
coordinator, the whole cluster killed at once. Every acknowledged record must be read
back exactly once and in order.

Each fault test heals what it broke (restart, resume, reconnect) before it ends, and
waits for the cluster to be whole again, so the tests share one cluster.
"""

import json
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cluster import Cluster
from conftest import corelog_bin

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def cluster(request):
    with tempfile.TemporaryDirectory(prefix="corelog-cluster-") as d:
        c = Cluster(d).start()
        failed = request.session.testsfailed
        yield c
        if request.session.testsfailed > failed:
            for i, b in c.brokers.items():
                lines = [l for l in b.log().splitlines() if " INFO " not in l or "controller" in l]
                print(f"--- broker {i} (warnings, errors, controller) ---")
                print("\n".join(lines[-40:]))
        c.stop()


def new_topic(cluster, partitions=3, rf=3):
    name = "c-" + uuid.uuid4().hex[:10]
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=rf)])[name].result(30)
    cluster.wait_for(lambda: fully_replicated(cluster, name, rf), 30, f"{name} leaders and full ISR")
    return name


def fully_replicated(cluster, topic, rf=3):
    try:
        parts = {}
        for i in cluster.ids:
            for p, (leader, replicas, isr) in cluster.metadata(topic, i).items():
                if leader == i:
                    parts[p] = (replicas, isr)
        n = len(cluster.metadata(topic))
        return len(parts) == n and all(len(isr) == rf and isr == r for r, isr in parts.values())
    except Exception:
        return False


def wait_whole(cluster, topic):
    cluster.wait_for(lambda: fully_replicated(cluster, topic), 60, "the cluster whole again")


def produce_through(cluster, topic, seconds, fault=None, at=2.0):
    """Idempotent acks=all producer for `seconds`; `fault()` runs once at `at` seconds.
    Returns the acknowledged (partition, offset, value) and the delivery errors."""
    p = Producer({
        "bootstrap.servers": cluster.bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 60000,
    })
    acked, errors = [], []

    def cb(err, msg):
        if err:
            errors.append(str(err))
        else:
            acked.append((msg.partition(), msg.offset(), msg.value()))

    t0 = time.time()
    fired = False
    i = 0
    while time.time() - t0 < seconds:
        p.produce(topic, key=b"k%d" % (i % 7), value=b"v%08d" % i, on_delivery=cb)
        i += 1
        p.poll(0)
        if fault and not fired and time.time() - t0 >= at:
            fired = True
            threading.Thread(target=fault, daemon=True).start()
        time.sleep(0.001)
    assert p.flush(90) == 0, "messages still in flight"
    return acked, errors


def read_all(cluster, topic, partitions):
    """Every record of every partition, from offset 0 up to the high watermark."""
    c = Consumer({
        "bootstrap.servers": cluster.bootstrap,
        "group.id": "reader-" + uuid.uuid4().hex[:6],
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        # From the log start when records below were deleted (DeleteRecords).
        "auto.offset.reset": "earliest",
    })
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = {p: [] for p in range(partitions)}
    done = set()
    deadline = time.time() + 60
    while len(done) < partitions and time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                done.add(m.partition())
            continue
        out[m.partition()].append((m.offset(), m.value()))
    c.close()
    assert len(done) == partitions, f"read back only partitions {done}"
    return out


def check_exactly_once(acked, log):
    values = [v for recs in log.values() for _, v in recs]
    assert len(values) == len(set(values)), "a record is in the log twice"
    where = {v: (p, o) for p, recs in log.items() for o, v in recs}
    lost = [a for a in acked if where.get(a[2]) != (a[0], a[1])]
    assert not lost, f"{len(lost)} acknowledged records lost or moved, e.g. {lost[:3]}"
    for p, recs in log.items():
        seq = [int(v[1:]) for _, v in recs]
        assert seq == sorted(seq), f"partition {p} out of order"


def test_rf3_topic_has_replicas_isr_and_spread_leaders(cluster):
    topic = new_topic(cluster, partitions=6)
    leaders = {}
    for i in cluster.ids:
        for p, (leader, replicas, isr) in cluster.metadata(topic, i).items():
            assert replicas == [1, 2, 3]
            if leader == i:
                leaders[p] = leader
    assert len(leaders) == 6, f"partitions without a leader: {leaders}"
    assert len(set(leaders.values())) >= 2, f"every leader on one broker: {leaders}"
    # new_topic waited for every leader to report all three replicas in sync.
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    f = admin.create_topics([NewTopic("too-many-" + topic, num_partitions=1, replication_factor=4)])
    with pytest.raises(Exception) as e:
        list(f.values())[0].result(30)
    assert "INVALID_REPLICATION_FACTOR" in str(e.value)


def test_cli_creates_and_describes_a_replicated_topic(cluster):
    name = "cli-" + uuid.uuid4().hex[:8]
    boot = cluster.brokers[1].bootstrap
    r = subprocess.run(
        [corelog_bin(), "topic", "create", name, "--partitions", "2", "--replication-factor", "2",
         "--bootstrap-server", boot],
        capture_output=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr.decode()
    # At once, from another broker than the one asked to create it: describe waits for
    # the topic to reach it and its leaders to be elected.
    r = subprocess.run(
        [corelog_bin(), "topic", "describe", name,
         "--bootstrap-server", cluster.brokers[3].bootstrap],
        capture_output=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert "ReplicationFactor: 2" in r.stdout.decode()
    rows = [l.split() for l in r.stdout.decode().splitlines() if l.split()[:1] in (["0"], ["1"])]
    assert len(rows) == 2 and all(row[1] != "-1" for row in rows), r.stdout.decode()
    cluster.wait_for(lambda: fully_replicated(cluster, name, 2), 30, "rf 2 topic")


def test_idempotent_producer_through_a_killed_and_restarted_leader(cluster):
    topic = new_topic(cluster)
    victim = cluster.leader_of(topic, 0)
    assert victim

    def fault():
        cluster.brokers[victim].kill()
        time.sleep(3)
        cluster.brokers[victim].start()

    acked, errors = produce_through(cluster, topic, 8, fault)
    assert not errors, errors[:3]
    assert len(acked) > 1000
    wait_whole(cluster, topic)
    check_exactly_once(acked, read_all(cluster, topic, 3))


def fake_peer_hello(port, node, tag):
    """Connects to a broker's RPC listener as broker `node` would, with `tag` for its
    proof of the cluster secret; returns whether the connection was still open after."""
    import socket
    import struct

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        challenge = b""
        while len(challenge) < 32:
            chunk = s.recv(32 - len(challenge))
            assert chunk, "the broker sent no challenge"
            challenge += chunk
        host = b"127.0.0.1"
        hello = b"CLRP" + bytes([2]) + struct.pack("<I", node) + bytes([len(host)]) + host
        hello += struct.pack("<H", 9092)
        s.sendall(hello + tag(challenge, hello))
        # A bogus frame after the hello: a broker that took the hello would wait for more.
        s.sendall(b"\x00" * 64)
        s.settimeout(5)
        try:
            return s.recv(1) != b""
        except socket.timeout:
            return True
        except ConnectionResetError:
            return False


def test_a_host_without_the_cluster_secret_cannot_act_as_a_broker(cluster):
    import hashlib
    import hmac

    port = cluster.rpc[1]
    secret = cluster.secret_file.read_text().strip().encode()

    def good(challenge, hello):
        return hmac.new(secret, b"corelog-rpc-hello-v2" + challenge + hello, hashlib.sha256).digest()

    def wrong(challenge, hello):
        return hmac.new(b"not the secret!!", b"corelog-rpc-hello-v2" + challenge + hello,
                        hashlib.sha256).digest()

    def replayed(challenge, hello):
        return good(b"\x00" * 32, hello)

    log = cluster.brokers[1].log
    before = log().count("failed authentication")
    for forge in (wrong, replayed, lambda c, h: b"\x00" * 32):
        assert not fake_peer_hello(port, 2, forge), forge
    cluster.wait_for(lambda: log().count("failed authentication") == before + 3, 10,
                     "each forged hello logged")
    # The check is what refused them: the same hello with the secret's tag gets past it
    # (and is closed only for the garbage frame that follows, which is logged).
    bad_frames = log().count("bad frame from node 2")
    fake_peer_hello(port, 2, good)
    cluster.wait_for(lambda: log().count("bad frame from node 2") > bad_frames, 10,
                     "the frame after a good hello read")
    assert log().count("failed authentication") == before + 3
    # The cluster still works.
    topic = new_topic(cluster)
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    p.produce(topic, b"after the fakes")
    assert p.flush(30) == 0


def describe_row(cluster, broker, topic, partition):
    """`corelog topic describe` as `broker` answers: the columns of one partition's row."""
    r = subprocess.run(
        [corelog_bin(), "topic", "describe", topic,
         "--bootstrap-server", cluster.brokers[broker].bootstrap],
        capture_output=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr.decode()
    for line in r.stdout.decode().splitlines():
        cols = line.split()
        if cols and cols[0] == str(partition):
            return cols
    raise AssertionError(f"no row for partition {partition}: {r.stdout.decode()}")


def test_brokers_without_a_replica_follow_the_leader_and_name_offline_replicas():
    # Four brokers and three replicas: every partition has a broker that holds no replica
    # of it and knows its leader only from the leader's announcements. (Its own cluster:
    # with Raft, a partition needs a majority of its replicas, so failing over needs
    # three replicas, and an outsider a fourth broker.)
    with tempfile.TemporaryDirectory(prefix="corelog-cluster4-") as d:
        c4 = Cluster(d, n=4, shards=1).start()
        try:
            _outsider_follows_a_failover(c4)
        finally:
            c4.stop()


def _outsider_follows_a_failover(cluster):
    topic = new_topic(cluster, partitions=2, rf=3)
    _, replicas, _ = cluster.metadata(topic)[0]
    outsider = next(i for i in cluster.ids if i not in replicas)

    def outsider_agrees():
        leader = cluster.leader_of(topic, 0)
        got, _, isr = cluster.metadata(topic, outsider)[0]
        return leader is not None and got == leader and isr == replicas

    cluster.wait_for(outsider_agrees, 10, "the outsider naming the leader and ISR")
    victim = cluster.leader_of(topic, 0)
    cluster.brokers[victim].kill()
    try:
        seen = []

        def outsider_names_another():
            seen.append(cluster.metadata(topic, outsider)[0][0])
            return seen[-1] not in (-1, victim)

        cluster.wait_for(outsider_names_another, 30, "the outsider naming the new leader")
        assert seen[-1] in replicas and seen[-1] == cluster.leader_of(topic, 0), seen[-5:]
        # A client that only knows the outsider finds the new leader through it.
        p = Producer({"bootstrap.servers": cluster.brokers[outsider].bootstrap, "acks": "all"})
        errors = []
        for i in range(20):
            p.produce(topic, value=b"o%d" % i, partition=0,
                      on_delivery=lambda err, msg: err and errors.append(str(err)))
        assert p.flush(30) == 0 and not errors, errors
        # The dead broker is named offline once it has been silent a while.
        cluster.wait_for(
            lambda: describe_row(cluster, outsider, topic, 0)[-1] == str(victim), 15,
            "the killed broker named an offline replica",
        )
    finally:
        cluster.brokers[victim].start()
    cluster.wait_for(lambda: fully_replicated(cluster, topic), 60, "whole again")
    # Back, it is no longer offline (the last column is the end offset again).
    cluster.wait_for(
        lambda: len(describe_row(cluster, outsider, topic, 0)) == 6, 15,
        "no offline replica once the broker is back",
    )


def test_delete_records_reaches_followers_and_a_lagging_one_restarts_at_the_start(cluster):
    """DeleteRecords on a replicated partition: the leader's start moves and its followers
    follow; a follower that was down while the start passed its log end empties its log
    and starts again at the leader's start; led by it later, the partition starts there
    and holds every acknowledged record after it."""
    from confluent_kafka.admin import OffsetSpec

    topic = new_topic(cluster, partitions=1)
    leader = cluster.leader_of(topic, 0)
    lagger = next(i for i in cluster.ids if i != leader)
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "linger.ms": 2})
    acked = {}

    def produce(lo, hi):
        for i in range(lo, hi):
            p.produce(topic, value=b"v%06d" % i, partition=0,
                      on_delivery=lambda err, m: err or acked.__setitem__(m.value(), m.offset()))
            if i % 10 == 9:
                p.flush(30)  # batches of ten
        assert p.flush(30) == 0

    produce(0, 100)
    cluster.brokers[lagger].kill()
    try:
        produce(100, 300)
        a = AdminClient({"bootstrap.servers": cluster.bootstrap})
        [res] = a.delete_records([TopicPartition(topic, 0, 250)]).values()
        assert res.result(30).low_watermark == 250
        produce(300, 350)
    finally:
        cluster.brokers[lagger].start()
    cluster.wait_for(lambda: fully_replicated(cluster, topic), 60, "the lagging replica back in the ISR")
    # Make the replica that restarted its log the leader: with the third replica paused,
    # kill the leader; restarted, it finds the lagging replica campaigning already.
    for _ in range(4):
        now = cluster.leader_of(topic, 0)
        if now == lagger:
            break
        third = next(i for i in cluster.ids if i not in (now, lagger))
        cluster.pause(third)
        try:
            cluster.brokers[now].kill()
            time.sleep(1)
            cluster.brokers[now].start()
            cluster.wait_for(lambda: cluster.leader_of(topic, 0) is not None, 30, "a leader")
        finally:
            cluster.resume(third)
        cluster.wait_for(lambda: fully_replicated(cluster, topic), 60, "whole again")
    assert cluster.leader_of(topic, 0) == lagger, "the restarted replica never led"
    a = AdminClient({"bootstrap.servers": cluster.bootstrap})
    tp = TopicPartition(topic, 0)
    assert a.list_offsets({tp: OffsetSpec.earliest()})[tp].result(10).offset == 250
    log = read_all(cluster, topic, 1)[0]
    assert log[0][0] == 250, log[:2]
    kept = {v: o for o, v in log}
    assert all(kept.get(v) == o for v, o in acked.items() if o >= 250), "acknowledged records lost"
    # The 100 produced after the delete, and any acknowledged earlier above offset 250
    # (control batches of leader changes take offsets too).
    assert len([o for o in acked.values() if o >= 250]) >= 100
    assert len(acked) == 350


def test_leader_paused_past_its_lease(cluster):
    topic = new_topic(cluster)
    victim = cluster.leader_of(topic, 0)

    def fault():
        cluster.pause(victim)
        time.sleep(3)
        cluster.resume(victim)

    acked, errors = produce_through(cluster, topic, 8, fault)
    assert not errors, errors[:3]
    wait_whole(cluster, topic)
    check_exactly_once(acked, read_all(cluster, topic, 3))


def test_leader_cut_off_from_its_peers(cluster):
    topic = new_topic(cluster)
    victim = cluster.leader_of(topic, 0)

    def fault():
        cluster.isolate(victim)
        time.sleep(4)
        cluster.heal()

    acked, errors = produce_through(cluster, topic, 9, fault)
    assert not errors, errors[:3]
    wait_whole(cluster, topic)
    # A new leader took over while it was cut off.
    check_exactly_once(acked, read_all(cluster, topic, 3))


def test_group_survives_its_coordinator_being_killed(cluster):
    topic = new_topic(cluster)
    p = Producer({"bootstrap.servers": cluster.bootstrap, "enable.idempotence": True})
    for i in range(3000):
        p.produce(topic, key=b"k%d" % (i % 11), value=b"m%d" % i)
    assert p.flush(60) == 0
    group = "g-" + topic
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})

    def committed():
        f = admin.list_consumer_group_offsets(
            [__import__("confluent_kafka").ConsumerGroupTopicPartitions(group)]
        )[group].result(30)
        return {tp.partition: tp.offset for tp in f.topic_partitions if tp.topic == topic}

    c = Consumer({
        "bootstrap.servers": cluster.bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    c.subscribe([topic])
    seen = set()
    last = {}
    deadline = time.time() + 30
    while len(seen) < 1500 and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            seen.add(m.value())
            last[m.partition()] = m.offset()
            c.commit(m, asynchronous=False)
    before = committed()
    coord = admin.describe_consumer_groups([group])[group].result(30).coordinator.id
    cluster.brokers[coord].kill()
    deadline = time.time() + 60
    while len(seen) < 3000 and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            seen.add(m.value())
            last[m.partition()] = m.offset()
            try:
                c.commit(m, asynchronous=False)
            except Exception:
                pass  # retried with the next message once the coordinator moved
    c.close()
    assert len(seen) == 3000, f"consumed {len(seen)} of 3000"
    after = committed()
    for part, off in before.items():
        assert after.get(part, -1) >= off, f"partition {part} commit went back: {off} -> {after.get(part)}"
    # Every partition committed past its last record.
    assert {q: after.get(q, -1) for q in last} == {q: o + 1 for q, o in last.items()}
    cluster.brokers[coord].start()
    wait_whole(cluster, topic)


def test_all_brokers_killed_together_lose_nothing_acknowledged(cluster):
    topic = new_topic(cluster)
    acked, errors = produce_through(cluster, topic, 3)
    assert not errors
    for b in cluster.brokers.values():
        b.kill()
    for b in cluster.brokers.values():
        b.start()
    wait_whole(cluster, topic)
    check_exactly_once(acked, read_all(cluster, topic, 3))


def test_kcat_kafka_python_and_kafkajs_against_the_cluster(cluster):
    topic = new_topic(cluster, partitions=2)
    lines = b"".join(b"kcat-%d\n" % i for i in range(20))
    r = subprocess.run(["kcat", "-b", cluster.bootstrap, "-P", "-t", topic, "-X", "acks=all"],
                       input=lines, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    from kafka import KafkaConsumer, KafkaProducer

    kp = KafkaProducer(bootstrap_servers=cluster.bootstrap.split(","), acks="all")
    for i in range(20):
        kp.send(topic, b"kp-%d" % i)
    kp.flush(30)
    kp.close()
    kc = KafkaConsumer(topic, bootstrap_servers=cluster.bootstrap.split(","),
                       auto_offset_reset="earliest", consumer_timeout_ms=5000, group_id="kp-" + topic)
    got = {m.value for m in kc}
    kc.close()
    assert got == {b"kcat-%d" % i for i in range(20)} | {b"kp-%d" % i for i in range(20)}
    r = subprocess.run(["kcat", "-b", cluster.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e",
                        "-f", "%s\n"], capture_output=True, timeout=60)
    assert sorted(r.stdout.decode().split()) == sorted(v.decode() for v in got)
    js_topic = "js-" + uuid.uuid4().hex[:8]
    r = subprocess.run(["node", str(HERE / "kafkajs_cluster.js"), cluster.bootstrap, js_topic],
                       capture_output=True, timeout=120, cwd=HERE)
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert out == {"created": True, "replicas": [3, 3], "consumed": 100}


def offset_for_leader_epoch(boot, topic, partition, current_epoch, epoch):
    """OffsetForLeaderEpoch v2 by hand: (error, leader epoch, end offset)."""
    import struct

    from rawkafka import Conn, string

    c = Conn(boot)
    body = struct.pack(">i", 1) + string(topic) + struct.pack(">iiii", 1, partition, current_epoch, epoch)
    r = c.request(23, 2, body)
    c.close()
    # throttle, topics[1]: name, partitions[1]: error, partition, epoch, end offset
    n = struct.unpack(">h", r[8:10])[0]
    at = 10 + n + 4
    error, _, leader_epoch, end = struct.unpack(">hiiq", r[at:at + 18])
    return error, leader_epoch, end


def test_leader_epochs_fence_stale_readers_and_tell_where_an_epoch_ended(cluster):
    topic = new_topic(cluster, partitions=1)
    acked, _ = produce_through(cluster, topic, 1)
    old_leader = cluster.leader_of(topic, 0)
    _, old_epoch, _ = offset_for_leader_epoch(cluster.brokers[old_leader].bootstrap, topic, 0, -1, 1 << 30)
    end_before = max(o for _, o, _ in acked) + 1
    cluster.brokers[old_leader].kill()
    cluster.wait_for(lambda: cluster.leader_of(topic, 0) not in (None, old_leader), 30, "a new leader")
    new_leader = cluster.leader_of(topic, 0)
    boot = cluster.brokers[new_leader].bootstrap
    # The new leader's epoch: the one whose end is the log end.
    error, epoch, end = offset_for_leader_epoch(boot, topic, 0, -1, 1 << 30)
    assert error == 0 and epoch > 0
    # The epoch before it ended where the new one began, past every acknowledged record.
    error, prev, prev_end = offset_for_leader_epoch(boot, topic, 0, -1, epoch - 1)
    assert error == 0 and prev < epoch and prev_end >= end_before
    # A reader naming an older leader epoch is fenced; a newer one is unknown here.
    assert offset_for_leader_epoch(boot, topic, 0, epoch - 1, epoch)[0] == 74
    assert offset_for_leader_epoch(boot, topic, 0, epoch + 5, epoch)[0] == 76
    assert old_epoch < epoch
    cluster.brokers[old_leader].start()
    wait_whole(cluster, topic)


def test_a_topic_deleted_and_created_again_starts_empty(cluster):
    topic = new_topic(cluster, partitions=1)
    acked, _ = produce_through(cluster, topic, 1)
    assert acked
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.delete_topics([topic])[topic].result(30)
    cluster.wait_for(lambda: topic not in admin.list_topics(timeout=5).topics, 30, "deletion")
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=3)])[topic].result(30)
    cluster.wait_for(lambda: fully_replicated(cluster, topic), 30, "the new topic")
    p = Producer({"bootstrap.servers": cluster.bootstrap, "enable.idempotence": True})
    p.produce(topic, value=b"fresh")
    assert p.flush(30) == 0
    log = read_all(cluster, topic, 1)
    assert [v for _, v in log[0]] == [b"fresh"], "the new topic holds the old one's records"
