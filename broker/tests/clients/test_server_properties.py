"""`corelog serve --config server.properties`: Kafka's own file format and key names,
the seed's lines (trailing comments included) among them; unknown keys are warned about by
name, never fatal."""

import subprocess
import tempfile
import time
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource
from conftest import Broker, corelog_bin, free_port

SEED_LINES = """# server.properties
num.partitions=3                    # Default partitions per topic
default.replication.factor=2        # Replication for fault tolerance
log.retention.hours=168             # Keep messages for 7 days
log.segment.bytes=1073741824        # 1GB segments
"""


def test_server_properties_from_the_seed_and_kafka_keys(topic):
    with tempfile.TemporaryDirectory(prefix="corelog-props-") as d:
        port = free_port()
        props = Path(d) / "server.properties"
        props.write_text(
            SEED_LINES
            + f"node.id=3\nlisteners=PLAINTEXT://127.0.0.1:{port}\n"
            + f"log.dirs={d}/kafka-logs\nmessage.max.bytes=2000000\n"
            + "num.io.threads=8\nmade.up.setting=1\n"
        )
        # Started by hand, without Broker.start's --listen/--data-dir: the file says where.
        b = Broker(Path(d) / "unused", port=port)
        log = open(b.log_path, "ab")
        b.proc = subprocess.Popen([corelog_bin(), "serve", "--config", str(props)], stdout=log, stderr=log)
        deadline = time.time() + 30
        while "corelog serving" not in b.log() and time.time() < deadline:
            assert b.proc.poll() is None, b.log()
            time.sleep(0.05)
        try:
            p = Producer({"bootstrap.servers": f"127.0.0.1:{port}"})
            p.produce(topic, value=b"x")
            assert p.flush(30) == 0
            a = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
            md = a.list_topics(topic, timeout=10)
            assert len(md.topics[topic].partitions) == 3, "num.partitions=3 not applied"
            assert list(md.brokers) == [3], "node.id=3 not applied"
            res = ConfigResource(ConfigResource.Type.TOPIC, topic)
            cfgs = a.describe_configs([res])[res].result(10)
            assert cfgs["retention.ms"].value == str(168 * 3600 * 1000)
            assert cfgs["max.message.bytes"].value == "2000000"
            assert (Path(d) / "kafka-logs" / "topics").is_dir(), "log.dirs not applied"
            log_text = b.log()
            for key in ("default.replication.factor", "num.io.threads", "made.up.setting"):
                assert key in log_text, f"no warning naming {key}:\n{log_text}"
        finally:
            assert b.stop() == 0
