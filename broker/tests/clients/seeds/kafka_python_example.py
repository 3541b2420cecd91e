# The kafka-python example from the seed document, unchanged but for the address
# (BOOTSTRAP is substituted by test_seeds.py).
from kafka import KafkaProducer, KafkaConsumer
import json

# Producer
producer = KafkaProducer(
    bootstrap_servers=['BOOTSTRAP'],
    value_serializer=lambda v: json.dumps(v).encode('utf-8')
)

producer.send('user-events', {
    'event': 'user_registered',
    'userId': '123',
    'timestamp': '2024-01-15T10:30:00Z',
    'data': {'email': 'user@example.com'}
})

# Consumer
consumer = KafkaConsumer(
    'user-events',
    bootstrap_servers=['BOOTSTRAP'],
    value_deserializer=lambda m: json.loads(m.decode('utf-8')),
    group_id='user-events-group'
)

for message in consumer:
    event = message.value
    print(f"Processing {event['event']} for user {event['userId']}")
