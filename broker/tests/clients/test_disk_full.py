"""A full disk: the broker runs on a small loop-mounted ext4 file system, producers fill
it. Writes are refused early and clearly below the reserve (the partition stays online),
every acknowledged record stays readable, consumers still commit, and writes resume by
themselves when space comes back, without a restart."""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from conftest import Broker

RESERVE = 8 << 20


@pytest.fixture
def small_fs():
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root and mkfs.ext4 for a loop mount")
    d = Path(tempfile.mkdtemp(prefix="corelog-fullfs-"))
    img, mnt = d / "fs.img", d / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "96M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(d, ignore_errors=True)


def make_filler(fs):
    """24 MiB the operator can give back later."""
    filler = fs / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (24 << 20))
        os.fsync(f.fileno())
    return filler


def start_broker(fs, reserve):
    cfg = fs / "corelog.toml"
    cfg.write_text(f"storage_min_free_bytes = {reserve}\n")
    return Broker(fs / "data", extra_args=["--config", str(cfg)]).start()


def fill(b, topic, seconds):
    """Produces 200 KB records until one is refused: (acked offsets, errors, the value)."""
    acked, failed = [], []

    def done(err, msg):
        (failed if err else acked).append(err if err else msg.offset())

    p = Producer({"bootstrap.servers": b.bootstrap, "message.timeout.ms": 4000,
                  "linger.ms": 5, "compression.type": "none"})
    value = os.urandom(200_000)
    deadline = time.time() + seconds
    while not failed and time.time() < deadline:
        for _ in range(10):
            p.produce(topic, value=value, on_delivery=done)
        p.flush(30)
    return acked, failed, value


def test_full_disk_refuses_writes_keeps_reads_and_recovers(small_fs, topic):
    filler = make_filler(small_fs)
    b = start_broker(small_fs, RESERVE)
    try:
        acked, failed, value = fill(b, topic, 60)
        assert failed, "the disk never filled"
        assert acked, "nothing was acknowledged before the disk filled"
        assert "disk space below the reserve" in b.log()
        assert b.proc.poll() is None

        # Everything acknowledged is readable; a consumer commits its position.
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "g-" + topic,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe([topic])
        seen = set()
        deadline = time.time() + 30
        while len(seen) < len(acked) and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                seen.add(m.offset())
        assert set(acked) <= seen, f"{len(set(acked) - seen)} acknowledged records unreadable:\n{b.log()[-3000:]}"
        c.commit(offsets=[TopicPartition(topic, 0, max(seen) + 1)], asynchronous=False)
        got = c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
        assert got == max(seen) + 1
        c.close()

        # Space comes back: writes resume by themselves.
        filler.unlink()
        time.sleep(1.5)
        ok = []
        p2 = Producer({"bootstrap.servers": b.bootstrap, "message.timeout.ms": 10000})
        p2.produce(topic, value=b"after", on_delivery=lambda e, m: ok.append(e is None))
        p2.flush(20)
        assert ok == [True], "writes did not resume after space came back"
    finally:
        b.stop()


def test_real_enospc_keeps_reads_and_recovers_without_a_restart(small_fs, topic):
    """With no reserve (storage_min_free_bytes = 0) writes run into ENOSPC itself: the
    partition keeps serving what was acknowledged, refuses writes, and reopens by itself
    once space is back; nothing acknowledged is lost."""
    filler = make_filler(small_fs)
    b = start_broker(small_fs, 0)
    try:
        acked, failed, value = fill(b, topic, 90)
        assert failed, "the disk never filled"
        assert "partition out of disk space" in b.log(), b.log()[-3000:]
        assert b.proc.poll() is None

        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "g-" + topic,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.assign([TopicPartition(topic, 0, 0)])
        seen = set()
        deadline = time.time() + 30
        while not set(acked) <= seen and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                seen.add(m.offset())
        c.close()
        assert set(acked) <= seen, f"{len(set(acked) - seen)} acknowledged records unreadable while full"

        filler.unlink()
        ok, deadline = [], time.time() + 30
        p2 = Producer({"bootstrap.servers": b.bootstrap, "message.timeout.ms": 20000})
        p2.produce(topic, value=b"after", on_delivery=lambda e, m: ok.append((e, m.offset() if e is None else None)))
        p2.flush(25)
        assert ok and ok[0][0] is None, f"writes did not resume: {ok}\n{b.log()[-3000:]}"
        assert "reopened after running out of disk space" in b.log()
        # Every acknowledged record, and the new one, read back in order.
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "g2-" + topic,
                      "enable.auto.commit": False})
        c.assign([TopicPartition(topic, 0, 0)])
        seen = {}
        deadline = time.time() + 30
        while ok[0][1] not in seen and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                seen[m.offset()] = m.value()
        c.close()
        assert set(acked) <= set(seen) and seen.get(ok[0][1]) == b"after"
        assert all(seen[o] == value for o in acked)
    finally:
        b.stop()
