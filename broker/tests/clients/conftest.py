"""Starts real `corelog serve` processes for the client tests.

Each test module gets its own broker on a free loopback port with a fresh data dir.
CORELOG_BIN picks the binary (default: target/release/corelog, then target/debug/corelog).
"""

import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def corelog_bin():
    if os.environ.get("CORELOG_BIN"):
        return os.environ["CORELOG_BIN"]
    for profile in ("release", "debug"):
        p = ROOT / "target" / profile / "corelog"
        if p.exists():
            return str(p)
    raise RuntimeError("build corelog first: cargo build --release -p corelog-broker")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, data_dir, port=None, extra_args=()):
        self.data_dir = str(data_dir)
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.proc = None
        self.log_path = Path(self.data_dir + ".log")

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def start(self, timeout=30):
        # Ready means this process logged that it serves: a connect alone could reach the
        # listening socket of a killed predecessor that the kernel has not torn down yet.
        served_before = self.log().count("corelog serving")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [corelog_bin(), "serve", "--listen", self.bootstrap, "--data-dir", self.data_dir]
            + self.extra_args,
            stdout=log,
            stderr=log,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corelog exited with {self.proc.returncode}: {self.log()[-4000:]}")
            if self.log().count("corelog serving") > served_before:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return self
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("corelog did not start listening: " + self.log()[-4000:])

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Stops the broker; returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self):
        return self.stop(signal.SIGKILL)

    def restart(self, sig=signal.SIGTERM):
        rc = self.stop(sig)
        self.start()
        return rc

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@pytest.fixture(scope="module")
def broker():
    with tempfile.TemporaryDirectory(prefix="corelog-test-") as d:
        b = Broker(Path(d) / "data").start()
        yield b
        t = time.time()
        rc = b.stop()
        assert rc == 0, "corelog did not shut down cleanly:\n" + b.log()
        if time.time() - t > 5:
            print("slow shutdown:\n" + b.log())


@pytest.fixture
def topic():
    """A fresh topic name per test."""
    return "t-" + uuid.uuid4().hex[:12]
