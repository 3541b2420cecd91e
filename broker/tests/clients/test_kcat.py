"""kcat (Debian's librdkafka 2.0) against a real corelog broker."""

import subprocess


def kcat(broker, *args, input=None, timeout=60):
    r = subprocess.run(
        ["kcat", "-b", broker.bootstrap, *args],
        input=input,
        capture_output=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout.decode()


def test_metadata_lists_the_broker(broker):
    out = kcat(broker, "-L")
    assert f"broker 1 at 127.0.0.1:{broker.port}" in out


def test_produce_keys_headers_and_consume_by_offset(broker, topic):
    lines = "".join(f"k{i}:v{i}\n" for i in range(10)).encode()
    kcat(broker, "-P", "-t", topic, "-K:", "-H", "origin=kcat", input=lines)
    out = kcat(broker, "-C", "-t", topic, "-o", "beginning", "-e", "-f", "%k=%s|%o|%h\n")
    rows = out.strip().split("\n")
    assert rows == [f"k{i}=v{i}|{i}|origin=kcat" for i in range(10)]
    # From a given offset, and the last two from the end.
    out = kcat(broker, "-C", "-t", topic, "-o", "7", "-e", "-f", "%s\n")
    assert out.split() == ["v7", "v8", "v9"]
    out = kcat(broker, "-C", "-t", topic, "-o", "-2", "-e", "-f", "%s\n")
    assert out.split() == ["v8", "v9"]


def test_every_codec(broker, topic):
    for codec in ("none", "gzip", "snappy", "lz4", "zstd"):
        kcat(broker, "-P", "-t", topic, "-z", codec, input=f"{codec}-a\n{codec}-b\n".encode())
    out = kcat(broker, "-C", "-t", topic, "-o", "beginning", "-e", "-f", "%s\n")
    assert out.split() == [f"{c}-{x}" for c in ("none", "gzip", "snappy", "lz4", "zstd") for x in "ab"]


def test_acks_settings(broker, topic):
    for acks in ("-1", "1", "0"):
        kcat(broker, "-P", "-t", topic, "-X", f"acks={acks}", input=f"acks{acks}\n".encode())
    out = kcat(broker, "-C", "-t", topic, "-o", "beginning", "-e", "-f", "%s\n")
    assert out.split() == ["acks-1", "acks1", "acks0"]


def test_query_offset_by_timestamp(broker, topic):
    # kcat -Q answers ListOffsets by time: topic:partition:timestamp.
    kcat(broker, "-P", "-t", topic, input=b"a\nb\n")
    out = kcat(broker, "-Q", "-t", f"{topic}:0:0")
    assert f"{topic} [0] offset 0" in out
