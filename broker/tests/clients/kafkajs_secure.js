// kafkajs over SSL (with a client certificate) or SASL_SSL (SCRAM or PLAIN): produce,
// then consume in a group. Prints one JSON line of what it read; test_tls.py and
// test_sasl.py check it. Usage: BOOTSTRAP TOPIC CA (cert CERT KEY | sasl MECHANISM USER PASSWORD)
const fs = require('fs');
const { Kafka, logLevel } = require('kafkajs');

const [bootstrap, topic, ca, how, a, b, c] = process.argv.slice(2);
const ssl = { ca: [fs.readFileSync(ca)] };
const options = { clientId: 'corelog-secure-test', brokers: [bootstrap], logLevel: logLevel.NOTHING, ssl };
if (how === 'cert') {
  ssl.cert = fs.readFileSync(a);
  ssl.key = fs.readFileSync(b);
} else {
  options.sasl = { mechanism: a, username: b, password: c };
}
const kafka = new Kafka(options);

async function main() {
  const producer = kafka.producer();
  await producer.connect();
  await producer.send({ topic, messages: [0, 1, 2, 3, 4].map((i) => ({ value: `js${i}` })) });
  await producer.disconnect();
  const consumer = kafka.consumer({ groupId: `g-${topic}` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const got = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${got.length} read`)), 30000);
    consumer.run({
      eachMessage: async ({ message }) => {
        got.push(message.value.toString());
        if (got.length === 5) { clearTimeout(timer); resolve(); }
      },
    }).catch(reject);
  });
  await consumer.disconnect();
  console.log(JSON.stringify({ got }));
}

main().catch((e) => { console.error(e); process.exit(1); });
