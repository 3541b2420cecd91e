// kafkajs against a corelog cluster: creates an RF 3 topic (kafkajs sends it to the
// controller Metadata names), produces idempotently with acks=all, and reads it back in
// a consumer group. Prints one JSON line; test_cluster.py checks it.
const { Kafka, logLevel } = require('kafkajs');

const [bootstrap, topic] = process.argv.slice(2);
const kafka = new Kafka({
  clientId: 'corelog-cluster-test',
  brokers: bootstrap.split(','),
  logLevel: logLevel.NOTHING,
  retry: { retries: 10 },
});

async function main() {
  const out = {};
  const admin = kafka.admin();
  await admin.connect();
  out.created = await admin.createTopics({
    topics: [{ topic, numPartitions: 2, replicationFactor: 3 }],
    waitForLeaders: true,
  });
  const md = await admin.fetchTopicMetadata({ topics: [topic] });
  out.replicas = md.topics[0].partitions.map((p) => p.replicas.length);
  await admin.disconnect();

  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  for (let i = 0; i < 10; i++) {
    await producer.send({
      topic, acks: -1,
      messages: Array.from({ length: 10 }, (_, j) => ({ key: `k${j}`, value: `v${i * 10 + j}` })),
    });
  }
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: `g-${topic}` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const seen = new Set();
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${seen.size} of 100 consumed`)), 60000);
    consumer.run({
      eachMessage: async ({ message }) => {
        seen.add(message.value.toString());
        if (seen.size === 100) {
          clearTimeout(timer);
          resolve();
        }
      },
    });
  });
  await consumer.disconnect();
  out.consumed = seen.size;
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
