"""TLS on the Kafka listener (issue 14): real clients over SSL with client certificates,
refusals that leave the broker serving, and certificates replaced without a restart.

Certificates are made here with openssl (a CA, the broker's, a client's, and a client's
from another CA); the broker has a PLAINTEXT and an SSL listener.
"""

import os
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from kafka import KafkaConsumer, KafkaProducer

from conftest import Broker, corelog_bin, free_port


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=d)
    openssl(
        "req", "-x509", "-new", "-key", f"{name}.key", "-out", f"{name}.pem", "-days", "3",
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d,
    )


def make_leaf(d, name, ca, subject, ext):
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=d)
    openssl("req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)
    (Path(d) / f"{name}.ext").write_text(ext)
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d,
    )


SERVER_EXT = (
    "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
    "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
)
CLIENT_EXT = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n"


@pytest.fixture(scope="module")
def pki():
    with tempfile.TemporaryDirectory(prefix="corelog-pki-") as d:
        make_ca(d, "ca")
        make_ca(d, "other-ca")
        make_leaf(d, "server", "ca", "/CN=localhost", SERVER_EXT)
        make_leaf(d, "server2", "ca", "/CN=localhost/O=replaced", SERVER_EXT)
        make_leaf(d, "alice", "ca", "/CN=alice/O=corelog-test", CLIENT_EXT)
        make_leaf(d, "mallory", "other-ca", "/CN=mallory", CLIENT_EXT)
        yield Path(d)


@pytest.fixture(scope="module")
def tls_broker(pki):
    with tempfile.TemporaryDirectory(prefix="corelog-tls-") as d:
        # The broker's certificate files are copies, so a test can replace them.
        for f in ("server.pem", "server.key"):
            (Path(d) / f).write_bytes((pki / f).read_bytes())
        port, ssl_port = free_port(), free_port()
        b = Broker(
            Path(d) / "data",
            port=port,
            extra_args=[
                "--listeners", f"PLAINTEXT://127.0.0.1:{port},SSL://127.0.0.1:{ssl_port}",
                "--tls-certificate", str(Path(d) / "server.pem"),
                "--tls-key", str(Path(d) / "server.key"),
                "--tls-ca", str(pki / "ca.pem"),
                "--tls-client-auth", "required",
            ],
        )
        b.ssl_port = ssl_port
        b.ssl_bootstrap = f"127.0.0.1:{ssl_port}"
        b.cert_dir = Path(d)
        b.start()
        yield b
        assert b.stop() == 0, b.log()


def rdkafka_ssl(pki, broker, who="alice", **extra):
    conf = {
        "bootstrap.servers": broker.ssl_bootstrap,
        "security.protocol": "SSL",
        "ssl.ca.location": str(pki / "ca.pem"),
        "ssl.endpoint.identification.algorithm": "https",
    }
    if who:
        conf["ssl.certificate.location"] = str(pki / f"{who}.pem")
        conf["ssl.key.location"] = str(pki / f"{who}.key")
    conf.update(extra)
    return conf


def topic_name():
    return "tls-" + uuid.uuid4().hex[:10]


def test_confluent_kafka_produces_consumes_and_commits_over_ssl(pki, tls_broker):
    topic = topic_name()
    p = Producer(rdkafka_ssl(pki, tls_broker, **{"acks": "all"}))
    for i in range(200):
        p.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
    assert p.flush(30) == 0
    group = "g-" + topic
    c = Consumer(
        rdkafka_ssl(
            pki, tls_broker, **{"group.id": group, "auto.offset.reset": "earliest",
                                "enable.auto.commit": False}
        )
    )
    c.subscribe([topic])
    got = []
    deadline = time.time() + 30
    while len(got) < 200 and time.time() < deadline:
        m = c.poll(1.0)
        if m is None:
            continue
        assert m.error() is None, m.error()
        got.append(m.value().decode())
    c.commit(asynchronous=False)
    committed = c.committed(c.assignment(), timeout=10)
    c.close()
    assert got == [f"v{i}" for i in range(200)]
    assert sum(tp.offset for tp in committed) == 200


def test_metadata_names_the_listener_the_client_came_in_through(pki, tls_broker):
    topic = topic_name()
    ssl_md = AdminClient(rdkafka_ssl(pki, tls_broker)).list_topics(timeout=20)
    plain_md = AdminClient({"bootstrap.servers": tls_broker.bootstrap}).list_topics(timeout=20)
    assert [(b.host, b.port) for b in ssl_md.brokers.values()] == [("127.0.0.1", tls_broker.ssl_port)]
    assert [(b.host, b.port) for b in plain_md.brokers.values()] == [("127.0.0.1", tls_broker.port)]
    # What one listener writes the other reads.
    p = Producer({"bootstrap.servers": tls_broker.bootstrap})
    p.produce(topic, b"from-plaintext")
    assert p.flush(20) == 0
    c = Consumer(rdkafka_ssl(pki, tls_broker, **{"group.id": "m-" + topic, "auto.offset.reset": "earliest"}))
    c.subscribe([topic])
    m = None
    deadline = time.time() + 20
    while m is None and time.time() < deadline:
        m = c.poll(1.0)
    c.close()
    assert m is not None and m.value() == b"from-plaintext"


def test_kafka_python_over_ssl_with_a_client_certificate(pki, tls_broker):
    topic = topic_name()
    common = dict(
        bootstrap_servers=tls_broker.ssl_bootstrap,
        security_protocol="SSL",
        ssl_cafile=str(pki / "ca.pem"),
        ssl_certfile=str(pki / "alice.pem"),
        ssl_keyfile=str(pki / "alice.key"),
    )
    p = KafkaProducer(acks="all", **common)
    for i in range(50):
        p.send(topic, f"kp{i}".encode())
    p.flush(30)
    p.close()
    c = KafkaConsumer(topic, group_id="kp-" + topic, auto_offset_reset="earliest",
                      consumer_timeout_ms=10000, **common)
    got = [m.value.decode() for m in c]
    c.commit()
    c.close()
    assert got == [f"kp{i}" for i in range(50)]


def kcat_ssl(pki, broker, *args, input=None, who="alice"):
    cmd = ["kcat", "-b", broker.ssl_bootstrap, "-X", "security.protocol=ssl",
           "-X", f"ssl.ca.location={pki / 'ca.pem'}"]
    if who:
        cmd += ["-X", f"ssl.certificate.location={pki / (who + '.pem')}",
                "-X", f"ssl.key.location={pki / (who + '.key')}"]
    return subprocess.run(cmd + list(args), input=input, capture_output=True, timeout=60)


def test_kcat_over_ssl(pki, tls_broker):
    topic = topic_name()
    r = kcat_ssl(pki, tls_broker, "-P", "-t", topic, input=b"a\nb\nc\n")
    assert r.returncode == 0, r.stderr
    r = kcat_ssl(pki, tls_broker, "-C", "-t", topic, "-o", "beginning", "-e", "-f", "%s\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["a", "b", "c"]
    r = kcat_ssl(pki, tls_broker, "-L")
    assert f"127.0.0.1:{tls_broker.ssl_port}" in r.stdout.decode()


def api_versions_frame():
    body = struct.pack(">hhih", 18, 0, 1, -1)  # ApiVersions v0, correlation 1, no client id
    return struct.pack(">i", len(body)) + body


def tls_client(pki, who):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if who:
        ctx.load_cert_chain(str(pki / f"{who}.pem"), str(pki / f"{who}.key"))
    return ctx


def kafka_roundtrip_over_tls(pki, broker, who):
    """Sends ApiVersions over TLS as `who`; returns the response's correlation id."""
    with socket.create_connection(("127.0.0.1", broker.ssl_port), timeout=10) as raw:
        with tls_client(pki, who).wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(api_versions_frame())
            head = s.recv(8)
            if len(head) < 8:
                raise ConnectionError("closed without an answer")
            return struct.unpack(">ii", head)[1]


def still_serving(broker):
    topic = topic_name()
    p = Producer({"bootstrap.servers": broker.bootstrap})
    p.produce(topic, b"alive")
    assert p.flush(20) == 0, "the broker stopped serving after a refused TLS client"


def test_refused_clients_leave_the_broker_serving(pki, tls_broker):
    assert kafka_roundtrip_over_tls(pki, tls_broker, "alice") == 1
    # A certificate from another CA, and none at all where one is required.
    for who in ("mallory", None):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            kafka_roundtrip_over_tls(pki, tls_broker, who)
    # kcat with the wrong certificate fails with an SSL error, not a hang.
    r = kcat_ssl(pki, tls_broker, "-L", "-m", "5", who="mallory")
    assert r.returncode != 0
    # A plaintext Kafka client on the TLS port gets no Kafka answer and is closed.
    with socket.create_connection(("127.0.0.1", tls_broker.ssl_port), timeout=10) as s:
        s.sendall(api_versions_frame())
        s.settimeout(10)
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        # Whatever came back is a TLS alert, never a Kafka response to correlation id 1.
        assert data[:1] in (b"", b"\x15"), data[:16]
    # Garbage and an abrupt close during the handshake.
    with socket.create_connection(("127.0.0.1", tls_broker.ssl_port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x02\x00" + os.urandom(300))
    still_serving(tls_broker)
    assert kafka_roundtrip_over_tls(pki, tls_broker, "alice") == 1
    assert tls_broker.proc.poll() is None


def served_certificate(broker, pki):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "alice.pem"), str(pki / "alice.key"))
    with socket.create_connection(("127.0.0.1", broker.ssl_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return s.getpeercert(binary_form=True)


def der(pem_path):
    return ssl.PEM_cert_to_DER_cert(Path(pem_path).read_text())


def wait_for_certificate(broker, pki, expected, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if served_certificate(broker, pki) == expected:
            return True
        time.sleep(0.2)
    return False


def test_certificates_are_replaced_without_a_restart(pki, tls_broker):
    assert served_certificate(tls_broker, pki) == der(pki / "server.pem")
    # A connection opened before the change keeps working after it.
    before = KafkaProducer(
        bootstrap_servers=tls_broker.ssl_bootstrap, security_protocol="SSL",
        ssl_cafile=str(pki / "ca.pem"), ssl_certfile=str(pki / "alice.pem"),
        ssl_keyfile=str(pki / "alice.key"),
    )
    topic = topic_name()
    before.send(topic, b"before").get(timeout=20)
    pid = tls_broker.proc.pid
    # A half-written file is refused and the old certificate stays in use.
    (tls_broker.cert_dir / "server.pem").write_text("-----BEGIN CERTIFICATE-----\nbroken\n")
    time.sleep(2.5)
    assert served_certificate(tls_broker, pki) == der(pki / "server.pem")
    # The new files: noticed by their change, without a signal.
    (tls_broker.cert_dir / "server.key").write_bytes((pki / "server2.key").read_bytes())
    (tls_broker.cert_dir / "server.pem").write_bytes((pki / "server2.pem").read_bytes())
    assert wait_for_certificate(tls_broker, pki, der(pki / "server2.pem")), tls_broker.log()[-3000:]
    # Back to the first, with SIGHUP (the files' change alone would do it too, so the
    # check is that the broker stays up and serves the one now on disk).
    (tls_broker.cert_dir / "server.key").write_bytes((pki / "server.key").read_bytes())
    (tls_broker.cert_dir / "server.pem").write_bytes((pki / "server.pem").read_bytes())
    os.kill(pid, signal.SIGHUP)
    assert wait_for_certificate(tls_broker, pki, der(pki / "server.pem"))
    before.send(topic, b"after").get(timeout=20)
    before.close()
    assert tls_broker.proc.poll() is None and tls_broker.proc.pid == pid


def test_an_ssl_listener_without_a_certificate_is_a_clear_error(tmp_path):
    port = free_port()
    r = subprocess.run(
        [corelog_bin(), "serve", "--data-dir", str(tmp_path / "d"),
         "--listeners", f"SSL://127.0.0.1:{port}"],
        capture_output=True, timeout=30,
    )
    assert r.returncode != 0
    assert b"SSL listener needs" in r.stderr + r.stdout


def test_server_properties_with_kafkas_ssl_keys(pki, tmp_path):
    # Kafka's PEM keystore: one file with the key and the certificate chain.
    keystore = tmp_path / "keystore.pem"
    keystore.write_bytes((pki / "server.key").read_bytes() + (pki / "server.pem").read_bytes())
    port, ssl_port = free_port(), free_port()
    props = tmp_path / "server.properties"
    props.write_text(
        f"node.id=1\n"
        f"listeners=PLAINTEXT://127.0.0.1:{port},SSL://127.0.0.1:{ssl_port},CONTROLLER://127.0.0.1:{free_port()}\n"
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port},SSL://localhost:{ssl_port}\n"
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL\n"
        "controller.listener.names=CONTROLLER\n"
        f"log.dirs={tmp_path / 'data'}\n"
        "ssl.keystore.type=PEM\n"
        f"ssl.keystore.location={keystore}\n"
        "ssl.truststore.type=PEM\n"
        f"ssl.truststore.location={pki / 'ca.pem'}\n"
        "ssl.client.auth=none\n"
        "ssl.enabled.protocols=TLSv1.3\n"
    )
    b = Broker(tmp_path / "data", port=port, extra_args=["--config", str(props)])
    # The fixture's --listen flag names the PLAINTEXT port too; the file's listeners win.
    b.start()
    try:
        b.ssl_port, b.ssl_bootstrap = ssl_port, f"localhost:{ssl_port}"
        r = kcat_ssl(pki, b, "-L", who=None)
        assert r.returncode == 0, r.stderr
        assert f"localhost:{ssl_port}" in r.stdout.decode()
        # Only TLS 1.3 is offered, as ssl.enabled.protocols says.
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", ssl_port), timeout=10) as raw:
            with pytest.raises(ssl.SSLError):
                ctx.wrap_socket(raw, server_hostname="localhost")
    finally:
        assert b.stop() == 0, b.log()


def test_kafkajs_over_ssl_with_a_client_certificate(pki, tls_broker):
    import json

    topic = topic_name()
    here = Path(__file__).resolve().parent
    r = subprocess.run(
        ["node", str(here / "kafkajs_secure.js"), f"localhost:{tls_broker.ssl_port}", topic,
         str(pki / "ca.pem"), "cert", str(pki / "alice.pem"), str(pki / "alice.key")],
        capture_output=True, timeout=120, cwd=here,
    )
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert out["got"] == [f"js{i}" for i in range(5)]
