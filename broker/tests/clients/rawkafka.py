"""Hand-built Kafka requests for the bad-input tests: what no well-behaved client sends."""

import socket
import struct


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def varint(n):
    n = (n << 1) ^ (n >> 63)  # zigzag
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def record_batch(values, producer_id=-1, producer_epoch=-1, base_sequence=-1, timestamp=1_700_000_000_000, record_count=None):
    records = b""
    for i, v in enumerate(values):
        body = b"\x00" + varint(0) + varint(i) + varint(-1) + varint(len(v)) + v + varint(0)
        records += varint(len(body)) + body
    count = len(values) if record_count is None else record_count
    after_crc = struct.pack(
        ">hiqqqhii", 0, len(values) - 1, timestamp, timestamp, producer_id, producer_epoch, base_sequence, count
    ) + records
    crc = crc32c(after_crc)
    batch_len = 4 + 1 + 4 + len(after_crc)
    return struct.pack(">qiibI", 0, batch_len, -1, 2, crc) + after_crc


def string(s):
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


class Conn:
    def __init__(self, bootstrap, timeout=10):
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.corr = 0

    def send_raw(self, data):
        self.sock.sendall(data)

    def request(self, api_key, version, body):
        self.corr += 1
        header = struct.pack(">hhi", api_key, version, self.corr) + string("raw-test")
        frame = header + body
        self.sock.sendall(struct.pack(">i", len(frame)) + frame)
        return self.read_response()

    def read_response(self):
        size = struct.unpack(">i", self.recv_exact(4))[0]
        data = self.recv_exact(size)
        corr = struct.unpack(">i", data[:4])[0]
        assert corr == self.corr, f"correlation id {corr} != {self.corr}"
        return data[4:]

    def recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by the broker")
            buf += chunk
        return buf

    def is_closed(self, timeout=5):
        """True if the broker closed the connection (EOF or reset) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


def produce_v3(conn, topic, partition, records, acks=-1):
    """Sends Produce v3 with one partition's records; returns (error_code, base_offset)."""
    body = string(None) + struct.pack(">hi", acks, 30_000)
    body += struct.pack(">i", 1) + string(topic) + struct.pack(">i", 1)
    body += struct.pack(">ii", partition, len(records)) + records
    resp = conn.request(0, 3, body)
    # [topics: name, [partitions: index, error, base_offset, log_append_time]], throttle
    off = 4
    name_len = struct.unpack(">h", resp[off : off + 2])[0]
    off += 2 + name_len + 4
    _index, error, base = struct.unpack(">ihq", resp[off : off + 14])
    return error, base


def init_producer_id(conn):
    resp = conn.request(22, 0, string(None) + struct.pack(">i", 60_000))
    _throttle, error, pid, epoch = struct.unpack(">ihqh", resp[:16])
    assert error == 0, error
    return pid, epoch


def api_versions(conn, version):
    """Returns (error_code, {api_key: (min, max)}) of a v0-layout answer."""
    resp = conn.request(18, version, b"")
    error, n = struct.unpack(">hi", resp[:6])
    keys = {}
    for i in range(n):
        k, lo, hi = struct.unpack(">hhh", resp[6 + 6 * i : 12 + 6 * i])
        keys[k] = (lo, hi)
    return error, keys


def records_payload(values):
    """The records of an uncompressed v2 batch: what a codec compresses."""
    records = b""
    for i, v in enumerate(values):
        body = b"\x00" + varint(0) + varint(i) + varint(-1) + varint(len(v)) + v + varint(0)
        records += varint(len(body)) + body
    return records


def raw_batch(payload, count, codec=0, timestamp=1_700_000_000_000):
    """A v2 batch around any records payload, with a correct CRC: the broker's record
    validation, not the CRC, has to catch what is wrong inside."""
    after_crc = struct.pack(
        ">hiqqqhii", codec, count - 1, timestamp, timestamp, -1, -1, -1, count
    ) + payload
    crc = crc32c(after_crc)
    return struct.pack(">qiibI", 0, 4 + 1 + 4 + len(after_crc), -1, 2, crc) + after_crc
