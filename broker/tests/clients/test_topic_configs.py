"""Topic and broker configs as Kafka 4 has them: every documented topic config is accepted
(by kafka-python's and librdkafka's admin clients), those corelog does not act on say so,
unknown names are INVALID_CONFIG, list configs take APPEND/SUBTRACT, and the broker
resource lists the broker's real configuration."""

import pytest
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry,
                                   ConfigResource, ConfigSource, NewTopic)
from kafka.admin import KafkaAdminClient, NewTopic as KNewTopic
from kafka.errors import InvalidConfigurationError

KAFKA4_TOPIC_CONFIGS = {
    "cleanup.policy": "delete", "compression.gzip.level": "5", "compression.lz4.level": "9",
    "compression.type": "producer", "compression.zstd.level": "3",
    "delete.retention.ms": "86400000", "file.delete.delay.ms": "60000",
    "flush.messages": "10000", "flush.ms": "1000",
    "follower.replication.throttled.replicas": "", "index.interval.bytes": "4096",
    "leader.replication.throttled.replicas": "", "local.retention.bytes": "-2",
    "local.retention.ms": "-2", "max.compaction.lag.ms": "9223372036854775807",
    "max.message.bytes": "2000000", "message.timestamp.after.max.ms": "3600000",
    "message.timestamp.before.max.ms": "9223372036854775807",
    "message.timestamp.type": "CreateTime", "min.cleanable.dirty.ratio": "0.5",
    "min.compaction.lag.ms": "0", "min.insync.replicas": "1", "preallocate": "false",
    "remote.log.copy.disable": "false", "remote.log.delete.on.disable": "false",
    "remote.storage.enable": "false", "retention.bytes": "1073741824",
    "retention.ms": "86400000", "segment.bytes": "104857600",
    "segment.index.bytes": "10485760", "segment.jitter.ms": "0", "segment.ms": "3600000",
    "unclean.leader.election.enable": "false",
}


def test_kafka_python_creates_a_topic_with_every_kafka4_config(broker, topic):
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        a.create_topics([KNewTopic(topic, 1, 1, topic_configs=KAFKA4_TOPIC_CONFIGS)])
        with pytest.raises(InvalidConfigurationError):
            a.create_topics([KNewTopic(topic + "-bad", 1, 1, topic_configs={"no.such.config": "1"})])
    finally:
        a.close()
    c = AdminClient({"bootstrap.servers": broker.bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = c.describe_configs([res])[res].result(10)
    assert set(KAFKA4_TOPIC_CONFIGS) <= set(entries), set(KAFKA4_TOPIC_CONFIGS) - set(entries)
    for k, v in KAFKA4_TOPIC_CONFIGS.items():
        if v:
            assert entries[k].value == v, (k, entries[k].value)
    assert entries["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    # (Which configs corelog only stores is said in DescribeConfigs v3+ documentation,
    # which these clients do not expose: topic_configs.rs tests it.)


def test_append_and_subtract_on_list_configs(broker, topic):
    c = AdminClient({"bootstrap.servers": broker.bootstrap})
    c.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(10)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("leader.replication.throttled.replicas", "0:1",
                    incremental_operation=AlterConfigOpType.APPEND)])
    c.incremental_alter_configs([res])[res].result(10)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("leader.replication.throttled.replicas", "0:2",
                    incremental_operation=AlterConfigOpType.APPEND)])
    c.incremental_alter_configs([res])[res].result(10)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("leader.replication.throttled.replicas", "0:1",
                    incremental_operation=AlterConfigOpType.SUBTRACT)])
    c.incremental_alter_configs([res])[res].result(10)
    d = ConfigResource(ConfigResource.Type.TOPIC, topic)
    assert c.describe_configs([d])[d].result(10)["leader.replication.throttled.replicas"].value == "0:2"
    bad = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "5", incremental_operation=AlterConfigOpType.APPEND)])
    with pytest.raises(Exception):
        c.incremental_alter_configs([bad])[bad].result(10)


def test_broker_resource_lists_the_real_configuration(broker):
    c = AdminClient({"bootstrap.servers": broker.bootstrap})
    res = ConfigResource(ConfigResource.Type.BROKER, "1")
    entries = c.describe_configs([res])[res].result(10)
    for k in ("advertised.listeners", "listeners", "log.dirs", "node.id", "log.retention.ms",
              "log.segment.bytes", "message.max.bytes", "num.partitions"):
        assert k in entries, k
    assert entries["advertised.listeners"].value == f"PLAINTEXT://{broker.bootstrap}"
    assert entries["log.dirs"].value.endswith("/data")
    e = entries["node.id"]
    assert e.value == "1" and e.is_read_only and not e.is_sensitive
    assert e.source == ConfigSource.STATIC_BROKER_CONFIG.value
