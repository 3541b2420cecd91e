"""kafkajs (npm) against a real corelog broker; records read back with librdkafka."""

import json
import subprocess
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

HERE = Path(__file__).resolve().parent


def test_kafkajs_admin_produce_and_offsets(broker, topic):
    r = subprocess.run(
        ["node", str(HERE / "kafkajs_check.js"), broker.bootstrap, topic],
        capture_output=True,
        timeout=120,
        cwd=HERE,
    )
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert out["created"] is True
    assert out["createdAgain"] is False  # kafkajs reports "already exists" as false
    assert out["listed"] and out["partitions"] == 2
    assert out["acks"] == {"-1": "0", "1": "3"}
    assert out["gzipBase"] == "0"
    assert out["offsets"] == [[0, "0", "7"], [1, "0", "7"]]
    # Partition 1's records carry the producer's clock (now), all later than base + 2.
    assert out["byTime"] == [[0, "2"], [1, "0"]]
    assert out["cleanupPolicy"] == "delete"

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "x", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
    got = {0: [], 1: []}
    for _ in range(100):
        m = c.poll(0.3)
        if m is not None and not m.error():
            got[m.partition()].append(m)
        if len(got[0]) == 7 and len(got[1]) == 7:
            break
    c.close()
    assert [m.value() for m in got[0]] == [b"v-1-0", b"v-1-1", b"v-1-2", b"v1-0", b"v1-1", b"v1-2", b"v0"]
    assert got[0][1].key() == b"k-1-1" and got[0][1].headers() == [("h", b"x1")]
    assert got[0][2].timestamp()[1] == 1700000000002
    assert [m.value() for m in got[1]] == [b"gz-1", b"gz-2"] + [f"idem-{i}".encode() for i in range(5)]
