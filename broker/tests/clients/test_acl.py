"""ACLs and users as metadata (issue 14): Kafka's authorization model enforced per API with
real clients (confluent-kafka, kafka-python), ACLs and SCRAM users managed with `corelog
acl` / `corelog user` and the admin clients, kept across a restart.

The broker has a SASL_PLAINTEXT listener for the users, and a PLAINTEXT loopback listener
whose clients are User:ANONYMOUS, a super user here: the admin port the CLI uses.
"""

import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from conftest import Broker, corelog_bin, free_port

USERS = {"admin": "admin-secret", "alice": "alice-secret", "bob": "bob-secret"}


@pytest.fixture(scope="module")
def broker():
    with tempfile.TemporaryDirectory(prefix="corelog-acl-") as d:
        port, sasl = free_port(), free_port()
        users = "".join(
            f'[[sasl.users]]\nname = "{u}"\npassword = "{p}"\n' for u, p in USERS.items()
        )
        cfg = Path(d) / "corelog.toml"
        cfg.write_text(
            f'listeners = ["PLAINTEXT://127.0.0.1:{port}", "SASL_PLAINTEXT://127.0.0.1:{sasl}"]\n'
            f'data_dir = "{Path(d) / "data"}"\n'
            "[authorization]\n"
            "enabled = true\n"
            'super_users = ["User:admin", "User:ANONYMOUS"]\n'
            "[sasl]\n"
            f"{users}"
        )
        b = Broker(Path(d) / "data", port=port, extra_args=["--config", str(cfg)])
        b.sasl = sasl
        b.start()
        # librdkafka asks the group's coordinator even for an assigned partition: the
        # group `read` uses is open to all, so a refusal there is the topic's.
        cli(b, "acl", "create", "--allow-principal", "User:*", "--operation", "Read",
            "--group", "unused")
        yield b
        assert b.stop() == 0, b.log()


def conf(b, user, password=None, **extra):
    c = {
        "bootstrap.servers": f"127.0.0.1:{b.sasl}",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": user,
        "sasl.password": USERS.get(user, "") if password is None else password,
    }
    c.update(extra)
    return c


def cli(b, *args, stdin=None, check=True):
    r = subprocess.run(
        [corelog_bin(), *args, "--bootstrap-server", b.bootstrap],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def name(prefix="acl-"):
    return prefix + uuid.uuid4().hex[:10]


def create_topic(b, topic):
    cli(b, "topic", "create", topic)


def produce(c, topic, n=3, timeout_ms=10000):
    """Produces n records with config c; returns the delivery errors."""
    p = Producer({**c, "message.timeout.ms": timeout_ms})
    errors = []

    def done(err, _msg):
        if err is not None:
            errors.append(err)

    for i in range(n):
        p.produce(topic, value=f"v{i}".encode(), on_delivery=done)
    assert p.flush(20) == 0
    return errors


def read(c, topic, want, timeout=15):
    """Reads partition 0 from the start without a group; returns (values, error code)."""
    cons = Consumer({**c, "group.id": "unused", "enable.auto.commit": False})
    cons.assign([TopicPartition(topic, 0, 0)])
    values, deadline = [], time.time() + timeout
    try:
        while time.time() < deadline and len(values) < want:
            m = cons.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                return values, m.error().code()
            values.append(m.value())
    finally:
        cons.close()
    return values, None


def allow(b, principal, op, *resource, pattern=None):
    args = ["acl", "create", "--allow-principal", principal, "--operation", op, *resource]
    if pattern:
        args += ["--resource-pattern-type", pattern]
    return cli(b, *args)


def test_write_without_read_produces_but_cannot_consume(broker):
    t = name()
    create_topic(broker, t)
    # Before any ACL: nothing (no ACL, no access).
    assert [e.code() for e in produce(conf(broker, "alice"), t, 1)] == [
        KafkaError.TOPIC_AUTHORIZATION_FAILED
    ]
    allow(broker, "User:alice", "Write", "--topic", t)
    assert produce(conf(broker, "alice"), t) == []
    values, error = read(conf(broker, "alice"), t, 3)
    assert values == [] and error == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # The admin (a super user) reads what alice wrote.
    values, error = read(conf(broker, "admin"), t, 3)
    assert error is None and values == [b"v0", b"v1", b"v2"]


def test_deny_beats_allow_and_a_prefix_covers_new_topics(broker):
    prefix = name("team-") + "-"
    allow(broker, "User:bob", "All", "--topic", prefix, pattern="prefixed")
    cli(broker, "acl", "create", "--deny-principal", "User:bob", "--operation", "Read",
        "--topic", prefix + "secret")
    # Both made after the ACLs.
    open_t, secret = prefix + "open", prefix + "secret"
    create_topic(broker, open_t)
    create_topic(broker, secret)
    bob = conf(broker, "bob")
    assert produce(bob, open_t) == [] and produce(bob, secret) == []
    assert read(bob, open_t, 3) == ([b"v0", b"v1", b"v2"], None)
    assert read(bob, secret, 3) == ([], KafkaError.TOPIC_AUTHORIZATION_FAILED)
    listed = cli(broker, "acl", "list", "--topic", prefix, "--resource-pattern-type", "prefixed")
    assert "Topic:PREFIXED:" + prefix in listed.stdout and "User:bob" in listed.stdout


def test_metadata_lists_only_the_topics_a_user_may_describe(broker):
    seen, hidden = name("seen-"), name("hidden-")
    create_topic(broker, seen)
    create_topic(broker, hidden)
    allow(broker, "User:alice", "Describe", "--topic", seen)
    a = AdminClient(conf(broker, "alice"))
    topics = a.list_topics(timeout=10).topics
    assert seen in topics and hidden not in topics
    # Asked for by name, the hidden one is refused, not shown.
    md = a.list_topics(topic=hidden, timeout=10)
    assert md.topics[hidden].error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    admin_topics = AdminClient(conf(broker, "admin")).list_topics(timeout=10).topics
    assert seen in admin_topics and hidden in admin_topics


def test_groups_need_read_on_the_group(broker):
    t, g = name(), name("grp-")
    create_topic(broker, t)
    assert produce(conf(broker, "admin"), t, 2) == []
    allow(broker, "User:alice", "Read", "--topic", t)

    def consume():
        c = Consumer({**conf(broker, "alice"), "group.id": g, "auto.offset.reset": "earliest"})
        c.subscribe([t])
        got, deadline = [], time.time() + 20
        try:
            while time.time() < deadline and len(got) < 2:
                m = c.poll(0.5)
                if m is None:
                    continue
                if m.error():
                    return got, m.error().code()
                got.append(m.value())
            c.commit(asynchronous=False)
        finally:
            c.close()
        return got, None

    assert consume() == ([], KafkaError.GROUP_AUTHORIZATION_FAILED)
    allow(broker, "User:alice", "Read", "--group", g)
    assert consume() == ([b"v0", b"v1"], None)


def test_acl_apis_need_the_cluster_and_admin_clients_use_them(broker):
    t = name()
    alice = AdminClient(conf(broker, "alice"))
    binding = AclBinding(ResourceType.TOPIC, t, ResourcePatternType.LITERAL, "User:bob", "*",
                         AclOperation.READ, AclPermissionType.ALLOW)
    with pytest.raises(KafkaException) as e:
        alice.create_acls([binding])[binding].result(timeout=10)
    assert e.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    admin = AdminClient(conf(broker, "admin"))
    admin.create_acls([binding])[binding].result(timeout=10)
    f = AclBindingFilter(ResourceType.TOPIC, t, ResourcePatternType.MATCH, None, None,
                         AclOperation.ANY, AclPermissionType.ANY)
    found = admin.describe_acls(f).result(timeout=10)
    assert [(x.name, x.principal, x.operation) for x in found] == [(t, "User:bob", AclOperation.READ)]
    deleted = admin.delete_acls([f])[f].result(timeout=10)
    assert len(deleted) == 1
    assert admin.describe_acls(f).result(timeout=10) == []
    # A topic alice may not create is refused; with Create on the cluster it is not.
    fs = alice.create_topics([NewTopic(t, 1)])
    with pytest.raises(KafkaException) as e:
        fs[t].result(timeout=10)
    assert e.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    allow(broker, "User:alice", "Create", "--cluster")
    alice.create_topics([NewTopic(t, 1)])[t].result(timeout=10)
    cli(broker, "acl", "delete", "--allow-principal", "User:alice", "--operation", "Create",
        "--cluster")


def test_users_made_through_the_api_log_in_and_survive_a_restart(broker):
    user, password, t = name("carol-"), "carol-pw-" + uuid.uuid4().hex[:6], name()
    create_topic(broker, t)
    cli(broker, "user", "create", user, "--mechanism", "SCRAM-SHA-512", stdin=password + "\n")
    assert user in cli(broker, "user", "list").stdout
    allow(broker, f"User:{user}", "Write", "--topic", t)
    carol = conf(broker, user, password, **{"sasl.mechanism": "SCRAM-SHA-512"})
    assert produce(carol, t, 1) == []
    broker.restart()
    assert produce(carol, t, 1) == [], "the user and the ACL outlive a restart"
    listed = cli(broker, "acl", "list", "--principal", f"User:{user}").stdout
    assert t in listed
    cli(broker, "user", "delete", user)
    errors = produce(carol, t, 1, timeout_ms=3000)
    assert len(errors) == 1, "a deleted user cannot log in"
    assert "authentication" in broker.log().lower()


def test_without_an_authorizer_the_acl_apis_say_security_disabled(tmp_path):
    b = Broker(tmp_path / "data").start()
    try:
        r = cli(b, "acl", "list", check=False)
        assert r.returncode != 0 and "SECURITY_DISABLED" in r.stderr, r.stderr
        # Everything else is allowed, as before.
        t = name()
        cli(b, "topic", "create", t)
        assert produce({"bootstrap.servers": b.bootstrap}, t, 1) == []
    finally:
        assert b.stop() == 0


def test_a_sasl_listener_whose_users_all_come_from_the_api(tmp_path):
    """No [sasl] table at all: the first user is made through the plaintext admin port,
    then logs in on the SASL listener; a wrong password is refused."""
    port, sasl = free_port(), free_port()
    cfg = tmp_path / "corelog.toml"
    cfg.write_text(
        f'listeners = ["PLAINTEXT://127.0.0.1:{port}", "SASL_PLAINTEXT://127.0.0.1:{sasl}"]\n'
        f'data_dir = "{tmp_path / "data"}"\n'
    )
    b = Broker(tmp_path / "data", port=port, extra_args=["--config", str(cfg)])
    b.sasl = sasl
    b.start()
    try:
        t = name()
        create_topic(b, t)
        cli(b, "user", "create", "dave", stdin="dave-pw\n")
        assert produce(conf(b, "dave", "dave-pw"), t, 1) == []
        assert produce(conf(b, "dave", "not-it"), t, 1, timeout_ms=3000) != []
    finally:
        assert b.stop() == 0
