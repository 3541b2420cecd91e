"""Users and ACLs on a cluster (issue 14): a three-broker cluster whose only Kafka
listeners are SASL_PLAINTEXT, with ACLs on. A change sent to any broker (Kafka clients
send CreateAcls and AlterUserScramCredentials to any of them) reaches the controller as a
forwarded proposal and then every broker; auto-creation at a broker that is not the
controller works without a plaintext listener.
"""

import struct
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (
    AdminClient,
    NewTopic,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from cluster import Cluster
from rawkafka import Conn, string

USERS = {"admin": "admin-secret", "alice": "alice-secret"}


def sasl(user, password=None, mechanism="SCRAM-SHA-256"):
    return {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": USERS.get(user, "") if password is None else password,
    }


@pytest.fixture(scope="module")
def cluster():
    with tempfile.TemporaryDirectory(prefix="corelog-cluster-acl-") as d:
        cfg = Path(d) / "security.toml"
        cfg.write_text(
            "[authorization]\nenabled = true\nsuper_users = [\"User:admin\"]\n[sasl]\n"
            + "".join(f'[[sasl.users]]\nname = "{u}"\npassword = "{p}"\n' for u, p in USERS.items())
        )
        c = Cluster(d, extra_args=["--config", str(cfg)], protocol="SASL_PLAINTEXT",
                    client=sasl("admin")).start()
        yield c
        c.stop()


def controller(cluster):
    md = AdminClient({**cluster.client, "bootstrap.servers": cluster.bootstrap}).list_topics(timeout=10)
    return md.controller_id


def admin_conn(broker):
    """A raw connection to one broker, logged in as admin (PLAIN over SaslHandshake v1)."""
    c = Conn(broker.bootstrap)
    resp = c.request(17, 1, string("PLAIN"))
    assert struct.unpack(">h", resp[:2])[0] == 0
    token = b"\0admin\0" + USERS["admin"].encode()
    resp = c.request(36, 1, struct.pack(">i", len(token)) + token)
    assert struct.unpack(">h", resp[:2])[0] == 0
    return c


def create_acl_at(broker, principal, topic, operation=4):
    """CreateAcls v1 to this broker alone: allow `principal` `operation` (4: Write) on
    the literal topic; returns the result's error code."""
    c = admin_conn(broker)
    body = struct.pack(">i", 1) + struct.pack(">b", 2) + string(topic) + struct.pack(">b", 3)
    body += string(principal) + string("*") + struct.pack(">bb", operation, 3)
    resp = c.request(30, 1, body)
    c.close()
    _throttle, n, error = struct.unpack(">iih", resp[:10])
    assert n == 1
    return error


def produce(bootstrap, conf, topic):
    p = Producer({**conf, "bootstrap.servers": bootstrap, "acks": "all",
                  "message.timeout.ms": 20000})
    errors = []
    p.produce(topic, b"x", on_delivery=lambda e, _m: e and errors.append(e))
    assert p.flush(30) == 0
    return errors


def test_acls_sent_to_any_broker_reach_every_broker(cluster):
    ctl = controller(cluster)
    assert ctl in cluster.brokers
    admin = AdminClient({**cluster.client, "bootstrap.servers": cluster.bootstrap})
    topics = {i: f"acl-{i}-" + uuid.uuid4().hex[:6] for i in cluster.ids}
    for f in admin.create_topics([NewTopic(t, 1, 3) for t in topics.values()]).values():
        f.result(30)
    alice = sasl("alice")
    for i, t in topics.items():
        assert produce(cluster.bootstrap, alice, t)[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
        # Straight to broker i: the controller itself, or one that forwards it there.
        assert create_acl_at(cluster.brokers[i], "User:alice", t) == 0, cluster.brokers[i].log()[-2000:]
    # Every broker enforces every binding at once (each change was answered only after
    # the broker that took it had applied it; the others follow the controller's log).
    for i, b in cluster.brokers.items():
        for t in topics.values():
            cluster.wait_for(lambda: produce(b.bootstrap, {**alice, "bootstrap.servers": b.bootstrap}, t) == [],
                             20, f"alice writes {t} through broker {i}")
    assert any(i != ctl for i in cluster.ids)


def test_users_made_at_a_non_controller_log_in_everywhere(cluster):
    ctl = controller(cluster)
    other = next(i for i in cluster.ids if i != ctl)
    user, password = "u" + uuid.uuid4().hex[:8], "pw-" + uuid.uuid4().hex[:8]
    a = AdminClient({**cluster.client, "bootstrap.servers": cluster.brokers[other].bootstrap})
    up = UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096),
                                      password.encode())
    for f in a.alter_user_scram_credentials([up]).values():
        f.result(30)
    topic = "u-" + uuid.uuid4().hex[:6]
    creator = AdminClient({**cluster.client, "bootstrap.servers": cluster.bootstrap})
    creator.create_topics([NewTopic(topic, 1, 3)])[topic].result(30)
    assert create_acl_at(cluster.brokers[other], f"User:{user}", topic) == 0
    conf = sasl(user, password)
    for i, b in cluster.brokers.items():
        cluster.wait_for(lambda: produce(b.bootstrap, conf, topic) == [], 20,
                         f"the new user logs in and writes through broker {i}")


def test_auto_creation_at_a_non_controller_without_a_plaintext_listener(cluster):
    ctl = controller(cluster)
    for i in (i for i in cluster.ids if i != ctl):
        topic = "auto-" + uuid.uuid4().hex[:8]
        b = cluster.brokers[i]
        # Only this broker is known to the client at first: its Metadata request creates
        # the topic, forwarded to the controller over the RPC links.
        deadline = time.time() + 30
        errors = ["not tried"]
        while errors and time.time() < deadline:
            errors = produce(b.bootstrap, sasl("admin"), topic)
        assert errors == [], (errors, b.log()[-2000:])
        assert cluster.metadata(topic)[0][0] in cluster.ids
