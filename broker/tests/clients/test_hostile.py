"""Hostile clients: length bombs, random bodies behind valid headers, partly sent and
trickled frames. None of them may crash the broker or make it hold more than a bounded
amount of memory, and other clients stay served throughout."""

import random
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from conftest import Broker
from rawkafka import Conn, api_versions


def rss_and_size_mb(pid):
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        fields[k] = v
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmSize"].split()[0]) // 1024


def alive(broker):
    assert broker.proc.poll() is None, "corelog died:\n" + broker.log()[-4000:]
    c = Conn(broker.bootstrap)
    error, keys = api_versions(c, 0)
    c.close()
    return error == 0 and 0 in keys


def header(key, version, corr=1):
    """A request header of the right version for `key`/`version` (client id "h")."""
    flexible = is_flexible(key, version)
    h = struct.pack(">hhi", key, version, corr) + struct.pack(">h", 1) + b"h"
    return h + (b"\x00" if flexible else b"")


# First flexible version per API key (header v2 from there on), for the APIs corelog serves.
FLEXIBLE_FROM = {0: 9, 1: 12, 2: 6, 3: 9, 8: 8, 9: 6, 10: 3, 11: 6, 12: 4, 13: 4, 14: 4,
                 15: 5, 16: 3, 18: 3, 19: 5, 20: 4, 21: 2, 22: 2, 32: 4, 33: 2, 35: 2,
                 37: 2, 42: 2, 44: 1, 47: 99, 60: 0, 61: 0, 75: 0}


def is_flexible(key, version):
    return version >= FLEXIBLE_FROM.get(key, 99)


def send_frame(conn, body):
    conn.send_raw(struct.pack(">i", len(body)) + body)


def test_the_18_byte_metadata_bomb(broker):
    """Metadata v1, an empty client id, a topics array of 2^31-1 entries: it aborted the
    broker (the codec reserved the array up front)."""
    frame = bytes.fromhex("0000000e00030001000000010000" + "7fffffff")
    c = Conn(broker.bootstrap)
    c.send_raw(frame)
    assert c.is_closed(), "the connection that sent a length bomb stayed open"
    assert alive(broker)


@pytest.mark.parametrize(
    "key,version,body",
    [
        (3, 9, b"\xff\xff\xff\xff\x0f" + b"\x00" * 4),  # Metadata v9: compact array of 2^32-2
        (1, 12, struct.pack(">iiiibii", -1, 500, 1, 1 << 20, 0, 0, -1) + b"\xff\xff\xff\x7f"),
        (2, 1, struct.pack(">i", -1) + struct.pack(">i", 0x7FFFFFFF)),  # ListOffsets topics
        (9, 1, struct.pack(">h", 1) + b"g" + struct.pack(">i", 0x7FFFFFF0)),  # OffsetFetch
        (15, 0, struct.pack(">i", 0x7FFFFFFF)),  # DescribeGroups groups
        (16, 3, b"\xff\xff\xff\xff\x0f"),  # ListGroups v3: states filter of 2^32-2
        (3, 9, b"\x01\x00\x00\x00" + b"\xfe\xff\xff\xff\x0f"),  # 4-billion tagged fields
    ],
)
def test_length_bombs_close_only_that_connection(broker, key, version, body):
    bystander = Conn(broker.bootstrap)
    c = Conn(broker.bootstrap)
    send_frame(c, header(key, version) + body)
    assert c.is_closed()
    assert api_versions(bystander, 0)[0] == 0
    assert alive(broker)


def test_random_bodies_behind_every_advertised_header(broker):
    """Random and truncated bodies for every (API key, version) the broker advertises; the
    broker answers or closes that connection, and keeps running."""
    rng = random.Random(11)
    c = Conn(broker.bootstrap)
    _, keys = api_versions(c, 0)
    c.close()
    sent = 0
    for key, (lo, hi) in sorted(keys.items()):
        for version in range(lo, hi + 1):
            for _ in range(4):
                n = rng.choice([0, 1, 3, 8, 17, 64, 300])
                body = bytes(rng.getrandbits(8) for _ in range(n))
                if rng.random() < 0.5:
                    # Lengths near the limits make bombs out of random bytes.
                    body = rng.choice([b"\x7f\xff\xff\xff", b"\xff\xff\xff\xff\x0f", b"\x00\x00"]) + body
                c = Conn(broker.bootstrap, timeout=10)
                send_frame(c, header(key, version) + body)
                # Either an answer or a close, within the timeout: no hang.
                c.sock.settimeout(10)
                try:
                    c.sock.recv(1)
                except (ConnectionResetError, socket.timeout):
                    pass
                c.close()
                sent += 1
    assert sent > 300
    assert alive(broker)


@pytest.fixture
def limited_broker():
    """A broker whose read timeout is short enough to watch trickling clients be closed."""
    with tempfile.TemporaryDirectory(prefix="corelog-hostile-") as d:
        cfg = Path(d) / "corelog.toml"
        cfg.write_text("request_read_timeout_ms = 4000\n")
        b = Broker(Path(d) / "data", extra_args=["--config", str(cfg)]).start()
        yield b
        b.stop()


def served(broker, topic):
    """A producer and a consumer get through, end to end, within seconds."""
    p = Producer({"bootstrap.servers": broker.bootstrap, "message.timeout.ms": 20000})
    p.produce(topic, value=b"still-served")
    assert p.flush(20) == 0
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "g-" + topic,
                  "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    deadline = time.time() + 20
    try:
        while time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                return m.value() == b"still-served"
        return False
    finally:
        c.close()


def test_partial_100mb_frames_hold_bounded_memory(broker, topic):
    """8 connections each send 90 MB of a frame that claims 100 MB and then stop: the
    broker holds at most its request budget (256 MiB by default), not what they claim, and
    serves other clients meanwhile."""
    base_rss, _ = rss_and_size_mb(broker.proc.pid)
    socks = []
    chunk = b"\x00" * (1 << 20)

    def hog():
        s = socket.create_connection(("127.0.0.1", broker.port))
        socks.append(s)
        s.settimeout(30)
        try:
            s.sendall(struct.pack(">i", 100 << 20) + struct.pack(">hhi", 0, 3, 1))
            for _ in range(90):
                s.sendall(chunk)
        except OSError:
            pass  # the broker stopped reading (budget spent) or we closed it

    threads = [threading.Thread(target=hog, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(6)
    peak = 0
    try:
        for _ in range(4):
            rss, _ = rss_and_size_mb(broker.proc.pid)
            peak = max(peak, rss)
            time.sleep(0.5)
        assert served(broker, topic), "another client was not served while the budget was full"
        rss, _ = rss_and_size_mb(broker.proc.pid)
        peak = max(peak, rss)
    finally:
        for s in socks:
            s.close()
    assert peak - base_rss < 400, f"broker RSS grew {peak - base_rss} MB (from {base_rss} MB)"
    assert alive(broker)


def test_slowloris_connections_are_closed_and_cost_little(limited_broker, topic):
    """200 connections claim 100 MB frames and then send a byte a second: their buffers
    grow with what arrives (address space too), other clients are served, and each is
    closed when its frame has not arrived within request_read_timeout_ms."""
    b = limited_broker
    base_rss, base_size = rss_and_size_mb(b.proc.pid)
    socks = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", b.port))
        s.sendall(struct.pack(">i", 100 << 20) + struct.pack(">hhi", 0, 3, 1))
        socks.append(s)
    for _ in range(2):
        time.sleep(1)
        for s in socks:
            try:
                s.send(b"\x00")
            except OSError:
                pass
    rss, size = rss_and_size_mb(b.proc.pid)
    assert rss - base_rss < 100, f"RSS grew {rss - base_rss} MB"
    assert size - base_size < 2048, f"address space grew {size - base_size} MB"
    assert served(b, topic)
    # Past the read timeout every trickler has been closed by the broker.
    deadline = time.time() + 15
    open_ = socks
    while open_ and time.time() < deadline:
        still = []
        for s in open_:
            s.settimeout(0.01)
            try:
                if s.recv(1) == b"":
                    continue
            except (ConnectionResetError, BrokenPipeError):
                continue
            except socket.timeout:
                pass
            still.append(s)
        open_ = still
        time.sleep(0.5)
    for s in socks:
        s.close()
    assert not open_, f"{len(open_)} trickling connections were never closed"
    assert alive(b)
