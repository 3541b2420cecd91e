"""A three-broker corelog cluster on loopback for the cluster tests.

Every broker-to-broker link goes through a TCP proxy the test owns (one per direction
and pair), so a test can cut one broker off from the others at the network level while
its clients still reach it: broker i's voter list names, for each peer j, the proxy
port of the link i -> j.
"""

import os
import signal
import socket
import threading
import time
from pathlib import Path

from conftest import Broker, free_port


class Link:
    """A TCP proxy for one direction of one broker pair; cut() drops its connections
    and refuses new ones until heal()."""

    def __init__(self, target_port):
        self.target = target_port
        self.port = free_port()
        self.cut_now = False
        self.conns = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while self.running:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            if self.cut_now:
                c.close()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.target), timeout=1)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d or self.cut_now:
                    break
                b.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def cut(self):
        self.cut_now = True
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.conns = []

    def heal(self):
        self.cut_now = False

    def close(self):
        self.running = False
        self.cut()
        self.sock.close()


class Cluster:
    def __init__(self, root, n=3, shards=2, extra_args=(), protocol="PLAINTEXT", client=None):
        # `protocol`: the Kafka listener's (SASL_PLAINTEXT needs users in extra_args'
        # config); `client`: the confluent-kafka settings the helpers connect with.
        self.client = dict(client or {})
        self.n = n
        self.ids = list(range(1, n + 1))
        rpc = {i: free_port() for i in self.ids}
        self.rpc = rpc
        # The brokers prove to each other that they know this (their RPC hello).
        self.secret_file = Path(root) / "cluster-secret"
        self.secret_file.parent.mkdir(parents=True, exist_ok=True)
        self.secret_file.write_text(os.urandom(24).hex() + "\n")
        # links[(i, j)]: what broker i dials to reach broker j.
        self.links = {
            (i, j): Link(rpc[j]) for i in self.ids for j in self.ids if i != j
        }
        self.brokers = {}
        for i in self.ids:
            voters = ",".join(
                f"{j}@127.0.0.1:{rpc[j] if j == i else self.links[(i, j)].port}"
                for j in self.ids
            )
            port = free_port()
            listener = [] if protocol == "PLAINTEXT" else [
                "--listeners", f"{protocol}://127.0.0.1:{port}"]
            self.brokers[i] = Broker(
                Path(root) / f"b{i}",
                port=port,
                extra_args=[
                    *listener,
                    "--node-id", str(i),
                    "--rpc-listen", f"127.0.0.1:{rpc[i]}",
                    "--voters", voters,
                    "--shards", str(shards),
                    "--cluster-secret-file", str(self.secret_file),
                    *extra_args,
                ],
            )

    @property
    def bootstrap(self):
        return ",".join(b.bootstrap for b in self.brokers.values())

    def start(self):
        for b in self.brokers.values():
            b.start()
        self.wait_for(lambda: self.registered() == self.n, 30, "brokers registered")
        return self

    def registered(self):
        from confluent_kafka.admin import AdminClient

        try:
            md = AdminClient({**self.client, "bootstrap.servers": self.bootstrap}).list_topics(
                timeout=5)
            return len(md.brokers)
        except Exception:
            return 0

    def stop(self):
        for b in self.brokers.values():
            b.stop()
        for link in self.links.values():
            link.close()

    def isolate(self, i):
        for (a, b), link in self.links.items():
            if i in (a, b):
                link.cut()

    def heal(self):
        for link in self.links.values():
            link.heal()

    @staticmethod
    def wait_for(cond, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    def metadata(self, topic, broker=None):
        """{partition: (leader, replicas, isr)} as `broker` (or any) answers."""
        from confluent_kafka.admin import AdminClient

        boot = self.brokers[broker].bootstrap if broker else self.bootstrap
        md = AdminClient({**self.client, "bootstrap.servers": boot}).list_topics(topic, timeout=10)
        t = md.topics[topic]
        if t.error is not None or not t.partitions:
            raise RuntimeError(f"{topic}: {t.error}")
        return {p.id: (p.leader, sorted(p.replicas), sorted(p.isrs)) for p in t.partitions.values()}

    def leader_of(self, topic, partition):
        """The leader as the leader itself says (a follower's view may lag)."""
        for i, b in self.brokers.items():
            if b.proc is None or b.proc.poll() is not None:
                continue
            try:
                leader, _, _ = self.metadata(topic, i)[partition]
            except Exception:
                continue
            if leader == i:
                return i
        return None

    def pause(self, i):
        self.brokers[i].proc.send_signal(signal.SIGSTOP)

    def resume(self, i):
        self.brokers[i].proc.send_signal(signal.SIGCONT)
