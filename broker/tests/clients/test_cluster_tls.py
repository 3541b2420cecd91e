"""TLS between brokers (issue 14): a three-broker cluster whose RPC links are mutual TLS
(`--rpc-tls`, certificates of one CA made by openssl) replicates as before; a plaintext
peer and a peer with another CA's certificate are refused at the handshake; one with a
good certificate still has to prove the cluster secret inside TLS.
"""

import hashlib
import hmac
import socket
import ssl
import struct
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from cluster import Cluster
from test_tls import make_ca, make_leaf

# A broker's certificate serves both ends of a link.
BROKER_EXT = (
    "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
    "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
)


@pytest.fixture(scope="module")
def certs():
    with tempfile.TemporaryDirectory(prefix="corelog-rpc-pki-") as d:
        make_ca(d, "ca")
        make_ca(d, "other-ca")
        make_leaf(d, "broker", "ca", "/CN=broker", BROKER_EXT)
        make_leaf(d, "intruder", "other-ca", "/CN=intruder", BROKER_EXT)
        yield Path(d)


@pytest.fixture(scope="module")
def cluster(certs):
    with tempfile.TemporaryDirectory(prefix="corelog-cluster-tls-") as d:
        c = Cluster(d, extra_args=[
            "--rpc-tls",
            "--tls-certificate", str(certs / "broker.pem"),
            "--tls-key", str(certs / "broker.key"),
            "--tls-ca", str(certs / "ca.pem"),
        ]).start()
        yield c
        c.stop()


def test_a_cluster_over_mutual_tls_replicates(cluster):
    topic = "tls-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=3)])[topic].result(30)
    cluster.wait_for(lambda: all(len(isr) == 3 for _, _, isr in cluster.metadata(topic).values()),
                     30, "every replica in sync")
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for i in range(200):
        p.produce(topic, value=b"m%d" % i, partition=i % 2)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "g-" + topic,
                  "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    got, deadline = set(), time.time() + 30
    while len(got) < 200 and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.add(m.value())
    c.close()
    assert got == {b"m%d" % i for i in range(200)}
    for b in cluster.brokers.values():
        assert "TLS handshake failed" not in b.log(), b.log()[-3000:]


def hello(node, tag_of, challenge):
    host = b"127.0.0.1"
    h = b"CLRP" + bytes([2]) + struct.pack("<I", node) + bytes([len(host)]) + host
    h += struct.pack("<H", 9092)
    return h + tag_of(challenge, h)


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return data
        data += chunk
    return data


def test_peers_are_refused_without_the_ca_or_the_secret(cluster, certs):
    port = cluster.rpc[1]
    log = cluster.brokers[1].log
    refused = log().count("TLS handshake failed")
    # Plaintext: no challenge, at most a TLS alert (record type 21), then closed.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"CLRP" + b"\x00" * 40)
        got = recv_exact(s, 64)
        assert len(got) < 32 and got[:1] in (b"", b"\x15"), got
    # Another CA's certificate: the handshake fails.
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.load_cert_chain(str(certs / "intruder.pem"), str(certs / "intruder.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.recv(1)
    cluster.wait_for(lambda: log().count("TLS handshake failed") >= refused + 2, 10,
                     "both handshakes refused and logged")
    # A good certificate but no secret: TLS goes through, the hello's tag does not.
    secret = cluster.secret_file.read_text().strip().encode()
    good_ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    good_ctx.load_cert_chain(str(certs / "broker.pem"), str(certs / "broker.key"))

    def attempt(tag_of):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with good_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                challenge = recv_exact(s, 32)
                assert len(challenge) == 32, "a challenge inside TLS"
                s.sendall(hello(2, tag_of, challenge) + b"\x00" * 64)
                s.settimeout(5)
                try:
                    return s.recv(1) != b""
                except (socket.timeout, TimeoutError):
                    return True
                except (ConnectionError, ssl.SSLError):
                    return False

    failed = log().count("failed authentication")
    assert not attempt(lambda c, h: hmac.new(b"not the secret!!", b"corelog-rpc-hello-v2" + c + h,
                                             hashlib.sha256).digest())
    cluster.wait_for(lambda: log().count("failed authentication") == failed + 1, 10,
                     "the forged hello logged")
    bad = log().count("bad frame from node 2")
    attempt(lambda c, h: hmac.new(secret, b"corelog-rpc-hello-v2" + c + h, hashlib.sha256).digest())
    cluster.wait_for(lambda: log().count("bad frame from node 2") > bad, 10,
                     "a good hello inside TLS gets past the check")
    # The cluster goes on.
    topic = "after-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 3)])[topic].result(30)
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    p.produce(topic, b"still replicating")
    assert p.flush(30) == 0


def test_rpc_tls_without_a_ca_or_a_secret_is_refused_at_start(certs, tmp_path):
    import subprocess

    from conftest import corelog_bin, free_port

    base = [corelog_bin(), "serve", "--node-id", "1", "--data-dir", str(tmp_path / "d"),
            "--listen", f"127.0.0.1:{free_port()}", "--rpc-listen", f"127.0.0.1:{free_port()}",
            "--voters", f"1@127.0.0.1:{free_port()},2@127.0.0.1:{free_port()}", "--rpc-tls",
            "--tls-certificate", str(certs / "broker.pem"), "--tls-key", str(certs / "broker.key")]
    r = subprocess.run(base, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "tls.ca" in r.stderr, r.stderr
    secret = tmp_path / "s"
    secret.write_text("x" * 32)
    r = subprocess.run(base + ["--tls-ca", str(certs / "ca.pem")], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0 and "cluster_secret_file" in r.stderr, r.stderr
