"""The admin CLI (`corelog topic ...`) against a real broker."""

import subprocess

from conftest import corelog_bin


def cli(broker, *args, ok=True):
    r = subprocess.run(
        [corelog_bin(), "topic", *args, "--bootstrap-server", broker.bootstrap],
        capture_output=True,
        timeout=60,
    )
    if ok:
        assert r.returncode == 0, r.stderr.decode()
    return r


def test_create_list_describe_delete(broker, topic):
    cli(broker, "create", topic, "--partitions", "3", "--config", "retention.ms=60000")
    assert topic in cli(broker, "list").stdout.decode().split()
    out = cli(broker, "describe", topic).stdout.decode()
    assert "PartitionCount: 3" in out and "retention.ms=60000" in out
    assert len([line for line in out.splitlines() if line.split()[:1] in (["0"], ["1"], ["2"])]) == 3
    r = cli(broker, "create", topic, ok=False)
    assert r.returncode != 0 and b"TOPIC_ALREADY_EXISTS" in r.stderr
    r = cli(broker, "create", "bad name", ok=False)
    assert r.returncode != 0 and b"INVALID_TOPIC_EXCEPTION" in r.stderr
    cli(broker, "delete", topic)
    assert topic not in cli(broker, "list").stdout.decode().split()
    r = cli(broker, "describe", topic, ok=False)
    assert r.returncode != 0
