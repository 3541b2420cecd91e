"""The metrics listener: /metrics read with Prometheus' own Python text parser while
confluent-kafka makes traffic, /health and /ready, hostile HTTP, and JSON logs."""

import json
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from conftest import Broker, corelog_bin, free_port


@pytest.fixture(scope="module")
def mbroker():
    with tempfile.TemporaryDirectory(prefix="corelog-metrics-") as d:
        port = free_port()
        # Two shards: a scrape gathers both, and partitions land on each.
        b = Broker(Path(d) / "data", extra_args=[
            "--metrics-listen", f"127.0.0.1:{port}", "--shards", "2", "--log-format", "json"])
        b.metrics = f"http://127.0.0.1:{port}"
        b.start()
        yield b
        assert b.stop() == 0, b.log()


def get(b, path):
    try:
        with urllib.request.urlopen(b.metrics + path, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def scrape(b):
    """{(name, frozenset(labels)): value} of every sample."""
    status, ctype, body = get(b, "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4"), (status, ctype)
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m, name, **labels):
    return m.get((name, frozenset(labels.items())), 0.0)


def total(m, name, **labels):
    """Sum over every sample of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in m.items() if n == name and want <= ls)


def test_health_and_ready(mbroker):
    assert get(mbroker, "/health")[0::2] == (200, "ok\n")
    assert get(mbroker, "/ready")[0::2] == (200, "ready\n")
    assert get(mbroker, "/nope")[0] == 404
    req = urllib.request.Request(mbroker.metrics + "/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405


def test_counters_move_with_the_traffic_and_lag_matches_group_describe(mbroker, topic):
    a = AdminClient({"bootstrap.servers": mbroker.bootstrap})
    a.create_topics([NewTopic(topic, num_partitions=4)])[topic].result(10)
    before = scrape(mbroker)
    p = Producer({"bootstrap.servers": mbroker.bootstrap, "linger.ms": 5})
    for i in range(200):
        p.produce(topic, value=b"v" * 100, key=str(i).encode())
    assert p.flush(30) == 0
    after = scrape(mbroker)
    produced = value(after, "corelog_requests_total", api="Produce") - value(
        before, "corelog_requests_total", api="Produce")
    assert produced >= 1
    # Every produce answered is in its latency histogram too.
    assert value(after, "corelog_request_duration_seconds_count", api="Produce") == value(
        after, "corelog_requests_total", api="Produce")
    assert value(after, "corelog_request_duration_seconds_bucket", api="Produce", le="+Inf") == value(
        after, "corelog_request_duration_seconds_count", api="Produce")
    grew = value(after, "corelog_topic_bytes_in_total", topic=topic)
    assert grew >= 200 * 100, grew  # batches hold the values and their framing
    assert value(after, "corelog_request_errors_total", api="Produce", error="NONE") > value(
        before, "corelog_request_errors_total", api="Produce", error="NONE")
    # Every partition of the topic is led here, its log holds the bytes.
    sizes = [value(after, "corelog_partition_log_size_bytes", topic=topic, partition=str(i))
             for i in range(4)]
    assert all(s > 0 for s in sizes), sizes
    assert sum(value(after, "corelog_partition_high_watermark", topic=topic, partition=str(i))
               for i in range(4)) == 200
    assert value(after, "corelog_partitions_led") == value(after, "corelog_partitions") >= 4
    assert value(after, "corelog_partitions_offline") == 0

    group = "g-" + topic
    c = Consumer({"bootstrap.servers": mbroker.bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got, deadline = 0, time.time() + 30
    while got < 150 and time.time() < deadline:
        for m in c.consume(50, timeout=1):
            assert m.error() is None
            got += 1
            if got == 150:
                break
    assert got == 150
    c.commit(asynchronous=False)
    c.close()
    m = scrape(mbroker)
    assert value(m, "corelog_topic_bytes_out_total", topic=topic) > 0
    assert total(m, "corelog_consumer_group_committed_offset", group=group) >= 150
    lag = {int(dict(ls)["partition"]): v for (n, ls), v in m.items()
           if n == "corelog_consumer_group_lag" and ("group", group) in ls}
    # What `corelog group describe` prints, partition by partition.
    out = subprocess.run([corelog_bin(), "group", "describe", group, "--bootstrap-server",
                          mbroker.bootstrap], capture_output=True, timeout=60, check=True)
    described = {}
    for line in out.stdout.decode().splitlines():
        cols = line.split()
        if cols and cols[0] == topic:
            described[int(cols[1])] = int(cols[4]) if cols[4] != "-" else None
    committed = {k: v for k, v in described.items() if v is not None}
    assert committed, out.stdout.decode()
    assert lag == {k: float(v) for k, v in committed.items()}, (lag, described)


def test_errors_are_counted_by_code(mbroker, topic):
    a = AdminClient({"bootstrap.servers": mbroker.bootstrap})
    a.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(10)
    before = value(scrape(mbroker), "corelog_request_errors_total", api="CreateTopics",
                   error="TOPIC_ALREADY_EXISTS")
    with pytest.raises(Exception):
        a.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(10)
    after = value(scrape(mbroker), "corelog_request_errors_total", api="CreateTopics",
                  error="TOPIC_ALREADY_EXISTS")
    assert after == before + 1


def test_shards_report_themselves(mbroker):
    m = scrape(mbroker)
    for shard in ("0", "1"):
        assert ("corelog_connections", frozenset({("shard", shard)})) in m
        assert value(m, "corelog_shard_busy_seconds_total", shard=shard) > 0
        assert value(m, "corelog_shard_tasks_executed_total", shard=shard) > 0
    assert value(m, "corelog_broker_info", node_id="1", clustered="false") == 1
    # Partition logs were synced by now (topic creation and produces at acks=all).
    assert value(m, "corelog_fsync_duration_seconds_count") > 0


@pytest.mark.parametrize("junk", [
    b"\x00\xff" * 100 + b"\r\n\r\n",
    b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 100 + b"\r\n",
    b"GET /metrics HTTP/1.1\r\nHost",  # never finished: the listener times it out
])
def test_hostile_http_gets_an_error_and_the_listener_keeps_serving(mbroker, junk):
    host, port = mbroker.metrics.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as s:
        answer = b""
        try:
            s.sendall(junk)
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed on us with bytes unread (the head over 8 KiB): a reset
    if junk.endswith(b"Host"):
        assert answer == b""  # a head never finished is closed unanswered, in bounded time
    elif answer:
        assert answer.split(b" ")[1][:1] == b"4", answer[:100]
    assert get(mbroker, "/health")[0] == 200


def test_logs_are_json(mbroker):
    lines = [l for l in mbroker.log().splitlines() if l.strip()]
    assert lines
    for line in lines:
        event = json.loads(line)
        assert {"timestamp", "level", "fields"} <= set(event), event
    assert any(json.loads(l)["fields"].get("message") == "corelog serving" for l in lines)


def test_ready_is_503_while_a_cluster_has_no_controller_leader(tmp_path):
    """One broker of a three-broker cluster alone cannot elect a controller leader."""
    port, rpc, mport = free_port(), free_port(), free_port()
    voters = f"1@127.0.0.1:{rpc},2@127.0.0.1:{free_port()},3@127.0.0.1:{free_port()}"
    b = Broker(tmp_path / "data", port=port, extra_args=[
        "--node-id", "1", "--rpc-listen", f"127.0.0.1:{rpc}", "--voters", voters,
        "--metrics-listen", f"127.0.0.1:{mport}"])
    b.metrics = f"http://127.0.0.1:{mport}"
    b.start()
    try:
        status, _, body = get(b, "/ready")
        assert status == 503 and "controller leader" in body, body
        assert get(b, "/health")[0] == 200
        m = scrape(b)
        assert value(m, "corelog_controller_leader") == -1
    finally:
        assert b.stop() == 0
