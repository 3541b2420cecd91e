// The kafkajs consumer example from the seed document, unchanged but for the address.
// The seed leaves processUserEvent to the reader; this one only notes the call.
async function processUserEvent(event) { console.log(`processed ${event.userId}`); }

const { Kafka } = require('kafkajs');

const kafka = new Kafka({
  clientId: 'my-consumer',
  brokers: ['BOOTSTRAP']
});

const consumer = kafka.consumer({ groupId: 'user-events-group' });

async function consumeMessages() {
  await consumer.connect();
  await consumer.subscribe({ topic: 'user-events', fromBeginning: false });
  
  await consumer.run({
    eachMessage: async ({ topic, partition, message }) => {
      const event = JSON.parse(message.value.toString());
      console.log(`Processing ${event.event} for user ${event.userId}`);
      
      // Process the event
      await processUserEvent(event);
    }
  });
}

consumeMessages();
