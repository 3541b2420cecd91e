// kafkajs against corelog: admin, producers (acks, gzip, idempotent), offsets by time.
// Prints one JSON line of what it observed; test_kafkajs.py checks it and reads the
// records back with another client.
const { Kafka, CompressionTypes, logLevel } = require('kafkajs');

const [bootstrap, topic] = process.argv.slice(2);
const kafka = new Kafka({ clientId: 'corelog-test', brokers: [bootstrap], logLevel: logLevel.NOTHING });

async function main() {
  const out = {};
  const admin = kafka.admin();
  await admin.connect();
  out.created = await admin.createTopics({ topics: [{ topic, numPartitions: 2 }], waitForLeaders: true });
  out.createdAgain = await admin.createTopics({ topics: [{ topic, numPartitions: 2 }] });
  out.listed = (await admin.listTopics()).includes(topic);
  const md = await admin.fetchTopicMetadata({ topics: [topic] });
  out.partitions = md.topics[0].partitions.length;

  const producer = kafka.producer({ allowAutoTopicCreation: false });
  await producer.connect();
  const base = 1700000000000;
  out.acks = {};
  for (const acks of [-1, 1]) {
    const r = await producer.send({
      topic, acks,
      messages: [0, 1, 2].map((i) => ({
        key: `k${acks}-${i}`, value: `v${acks}-${i}`, partition: 0,
        headers: { h: `x${i}` }, timestamp: String(base + i),
      })),
    });
    out.acks[acks] = r[0].baseOffset;
  }
  await producer.send({ topic, acks: 0, messages: [{ key: 'k0', value: 'v0', partition: 0, timestamp: String(base + 10) }] });
  const gz = await producer.send({
    topic, compression: CompressionTypes.GZIP,
    messages: [{ value: 'gz-1', partition: 1 }, { value: 'gz-2', partition: 1 }],
  });
  out.gzipBase = gz[0].baseOffset;
  await producer.disconnect();

  const idem = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await idem.connect();
  for (let i = 0; i < 5; i++) {
    await idem.send({ topic, messages: [{ value: `idem-${i}`, partition: 1 }] });
  }
  await idem.disconnect();

  // acks=0 has no answer: wait until the broker shows it.
  for (let i = 0; i < 50; i++) {
    const o = await admin.fetchTopicOffsets(topic);
    if (o.find((p) => p.partition === 0).high === '7') break;
    await new Promise((r) => setTimeout(r, 100));
  }
  out.offsets = (await admin.fetchTopicOffsets(topic)).sort((a, b) => a.partition - b.partition)
    .map((p) => [p.partition, p.low, p.high]);
  out.byTime = (await admin.fetchTopicOffsetsByTimestamp(topic, base + 2))
    .sort((a, b) => a.partition - b.partition).map((p) => [p.partition, p.offset]);
  const cfg = await admin.describeConfigs({ resources: [{ type: 2, name: topic }], includeSynonyms: false });
  out.cleanupPolicy = cfg.resources[0].configEntries.find((e) => e.configName === 'cleanup.policy').configValue;
  await admin.disconnect();
  console.log(JSON.stringify(out));
}

main().catch((e) => { console.error(e); process.exit(1); });
