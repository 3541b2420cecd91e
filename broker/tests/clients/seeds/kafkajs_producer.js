// The kafkajs producer example from the seed document, unchanged but for the address.
const { Kafka } = require('kafkajs');

const kafka = new Kafka({
  clientId: 'my-app',
  brokers: ['BOOTSTRAP']
});

const producer = kafka.producer();

async function sendMessage() {
  await producer.connect();
  
  await producer.send({
    topic: 'user-events',
    messages: [
      {
        key: 'user-123',
        value: JSON.stringify({
          event: 'user_registered',
          userId: '123',
          timestamp: new Date().toISOString(),
          data: { email: 'user@example.com' }
        })
      }
    ]
  });
  
  await producer.disconnect();
}

sendMessage();
