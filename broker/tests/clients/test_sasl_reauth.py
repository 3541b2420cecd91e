"""Re-authentication (KIP-368, `connections.max.reauth.ms`): the broker gives an
authenticated session a lifetime; a client that re-authenticates in band goes on, one that
does not is closed at its next request, and a re-authentication may not switch users.
"""

import json
import socket
import struct
import tempfile
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from conftest import Broker, free_port
from test_sasl import frame, read_frame

LIFETIME_MS = 1500
USERS = {"alice": "alice-secret", "bob": "bob-secret"}


@pytest.fixture(scope="module")
def broker():
    with tempfile.TemporaryDirectory(prefix="corelog-reauth-") as d:
        port, sasl = free_port(), free_port()
        users = "".join(
            f'[[sasl.users]]\nname = "{u}"\npassword = "{p}"\n' for u, p in USERS.items()
        )
        cfg = Path(d) / "corelog.toml"
        cfg.write_text(
            f'listeners = ["PLAINTEXT://127.0.0.1:{port}", "SASL_PLAINTEXT://127.0.0.1:{sasl}"]\n'
            f'data_dir = "{Path(d) / "data"}"\n'
            "[sasl]\n"
            f"connections_max_reauth_ms = {LIFETIME_MS}\n"
            f"{users}"
        )
        b = Broker(Path(d) / "data", port=port, extra_args=["--config", str(cfg)])
        b.sasl = sasl
        b.start()
        yield b
        assert b.stop() == 0, b.log()


def authenticate(s, user, correlation):
    """PLAIN over SaslHandshake v1 + SaslAuthenticate v1: (error code, session lifetime)."""
    mech = b"PLAIN"
    s.sendall(frame(17, 1, correlation, struct.pack(">h", len(mech)) + mech))
    assert struct.unpack(">ih", read_frame(s)[:6]) == (correlation, 0)
    token = b"\0" + user.encode() + b"\0" + USERS.get(user, "wrong").encode()
    s.sendall(frame(36, 1, correlation + 1, struct.pack(">i", len(token)) + token))
    body = read_frame(s)
    corr, error = struct.unpack(">ih", body[:6])
    assert corr == correlation + 1
    if error:
        return error, None
    at = 6
    (mlen,) = struct.unpack(">h", body[at : at + 2])
    at += 2 + max(mlen, 0)
    (blen,) = struct.unpack(">i", body[at : at + 4])
    at += 4 + max(blen, 0)
    (lifetime,) = struct.unpack(">q", body[at : at + 8])
    return error, lifetime


def metadata(s, correlation):
    s.sendall(frame(3, 1, correlation, struct.pack(">i", 0)))  # Metadata v1, no topics
    return struct.unpack(">i", read_frame(s)[:4])[0]


def test_a_session_that_is_not_renewed_ends_and_a_renewed_one_goes_on(broker):
    with socket.create_connection(("127.0.0.1", broker.sasl), timeout=10) as s:
        assert authenticate(s, "alice", 1) == (0, LIFETIME_MS)
        assert metadata(s, 3) == 3
        time.sleep(LIFETIME_MS / 1000 + 0.3)
        s.sendall(frame(3, 1, 4, struct.pack(">i", 0)))
        with pytest.raises((ConnectionError, ConnectionResetError)):
            read_frame(s)
    with socket.create_connection(("127.0.0.1", broker.sasl), timeout=10) as s:
        assert authenticate(s, "alice", 1) == (0, LIFETIME_MS)
        time.sleep(LIFETIME_MS / 1000 + 0.3)
        assert authenticate(s, "alice", 10) == (0, LIFETIME_MS), "re-authenticated"
        assert metadata(s, 12) == 12, "the renewed session serves requests"


def test_re_authentication_may_not_switch_users(broker):
    with socket.create_connection(("127.0.0.1", broker.sasl), timeout=10) as s:
        assert authenticate(s, "alice", 1) == (0, LIFETIME_MS)
        error, _ = authenticate(s, "bob", 3)
        assert error == 58  # SASL_AUTHENTICATION_FAILED
        with pytest.raises((ConnectionError, ConnectionResetError)):
            read_frame(s)


def test_librdkafka_re_authenticates_in_band(broker):
    before = broker.log().count("without re-authentication")
    stats = []
    p = Producer({
        "bootstrap.servers": f"127.0.0.1:{broker.sasl}",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "alice",
        "sasl.password": USERS["alice"],
        "linger.ms": 0,
        "statistics.interval.ms": 500,
        "stats_cb": lambda j: stats.append(json.loads(j)),
    })
    errors = []
    deadline = time.time() + 3 * LIFETIME_MS / 1000 + 1
    n = 0
    while time.time() < deadline:
        p.produce("reauth", value=b"x%d" % n, on_delivery=lambda e, _m: e and errors.append(e))
        n += 1
        p.poll(0.1)
    assert p.flush(15) == 0 and errors == []
    # Three lifetimes went by: had librdkafka not renewed its sessions, the broker would
    # have closed them (and said so).
    assert broker.log().count("without re-authentication") == before, broker.log()[-3000:]
    # ...and it would have connected again: each broker connection was made once.
    p.poll(0.6)
    connects = {n: b["connects"] for n, b in stats[-1]["brokers"].items() if b["connects"]}
    print(connects)
    assert connects and all(c == 1 for c in connects.values()), connects
