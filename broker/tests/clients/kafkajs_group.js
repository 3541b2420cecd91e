// A kafkajs group consumer, as in the seeds: subscribe from the beginning, consume COUNT
// messages, print them as JSON, disconnect.
const { Kafka, logLevel } = require('kafkajs');

const [bootstrap, topic, groupId, count] = process.argv.slice(2);
const kafka = new Kafka({ clientId: 'my-consumer', brokers: [bootstrap], logLevel: logLevel.NOTHING });
const consumer = kafka.consumer({ groupId });

async function main() {
  const got = [];
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${got.length} messages`)), 60000);
    consumer.run({
      eachMessage: async ({ message }) => {
        got.push(message.value.toString());
        if (got.length >= Number(count)) {
          clearTimeout(timer);
          resolve();
        }
      },
    });
  });
  await consumer.disconnect();
  console.log(JSON.stringify(got));
}

main().catch((e) => { console.error(e); process.exit(1); });
