"""Open files: the broker raises its soft RLIMIT_NOFILE to the hard limit and says so; a
topic that cannot be opened whole (the hard limit is reached) is not created at all, and a
restart then works."""

import subprocess
import tempfile
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic
from conftest import Broker, corelog_bin


def start_limited(b, limit):
    log = open(b.log_path, "ab")
    cmd = f"ulimit -n {limit}; exec {corelog_bin()} serve --listen {b.bootstrap} --data-dir {b.data_dir}"
    served_before = b.log().count("corelog serving")
    b.proc = subprocess.Popen(["bash", "-c", cmd], stdout=log, stderr=log)
    deadline = time.time() + 30
    while b.log().count("corelog serving") == served_before and time.time() < deadline:
        assert b.proc.poll() is None, b.log()
        time.sleep(0.05)


def test_a_topic_too_big_for_the_open_files_limit_is_not_half_created(topic):
    with tempfile.TemporaryDirectory(prefix="corelog-nofile-") as d:
        b = Broker(Path(d) / "data")
        start_limited(b, 400)
        try:
            assert "open files limit" in b.log() and "open_files" in b.log()
            a = AdminClient({"bootstrap.servers": b.bootstrap})
            f = a.create_topics([NewTopic(topic, num_partitions=2000)])[topic]
            try:
                f.result(60)
                created = True
            except Exception:
                created = False
            assert not created, "2000 partitions cannot be opened with 400 files"
            assert topic not in a.list_topics(timeout=10).topics, "half a topic is listed"
            assert "Too many open files" in b.log() and "rolling it back" in b.log(), b.log()[-2000:]
            # A smaller topic still works, then a restart under the same limit.
            small = topic + "-small"
            a.create_topics([NewTopic(small, num_partitions=4)])[small].result(30)
        finally:
            assert b.stop() == 0
        start_limited(b, 400)
        try:
            md = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(timeout=10)
            assert small in md.topics and topic not in md.topics
        finally:
            assert b.stop() == 0
