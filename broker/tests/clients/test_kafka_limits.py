"""Limits clients depend on: Fetch honours the request's max_bytes (the first batch may
exceed it, nothing more); a transaction coordinator lookup fails fast and says why."""

import struct
import time

import pytest
from confluent_kafka import KafkaException, Producer
from rawkafka import Conn, string


def fetch_v4(conn, topic, max_bytes, partition_max_bytes):
    """Fetch v4 of partition 0 from offset 0; returns the whole response's size."""
    body = struct.pack(">iiiib", -1, 500, 1, max_bytes, 0)
    body += struct.pack(">i", 1) + string(topic) + struct.pack(">i", 1)
    body += struct.pack(">iqi", 0, 0, partition_max_bytes)  # partition, offset, its limit
    return len(conn.request(1, 4, body))


def test_fetch_honours_request_max_bytes(broker, topic):
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0, "batch.size": 1 << 20,
                  "compression.type": "none"})
    value = b"x" * 400_000
    for _ in range(40):  # ~16 MB, batches of up to 1 MB
        p.produce(topic, value=value)
        p.poll(0)
    assert p.flush(60) == 0
    c = Conn(broker.bootstrap)
    size = fetch_v4(c, topic, 1 << 20, 50 << 20)
    assert 400_000 < size <= (1 << 20) + (1 << 20), f"a 1 MB fetch got {size} bytes"
    # Without the request limit the partition limit rules.
    big = fetch_v4(c, topic, 50 << 20, 50 << 20)
    assert big > 8 << 20, big
    c.close()


def test_transactional_producer_fails_fast(broker):
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "tx-1"})
    t = time.time()
    with pytest.raises(KafkaException) as e:
        p.init_transactions(30)
    took = time.time() - t
    assert took < 20, f"init_transactions took {took:.1f} s: the error must not be retried"
    assert "not supported" in str(e.value) or e.value.args[0].fatal(), str(e.value)
