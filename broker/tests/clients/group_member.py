"""A consumer-group member in its own process, so a test can kill it without LeaveGroup.

Usage: group_member.py BOOTSTRAP GROUP TOPIC. Prints "assigned N" when it has
partitions, then one line per message it processed, after committing it.
"""

import sys

from confluent_kafka import Consumer

bootstrap, group, topic = sys.argv[1:4]
c = Consumer(
    {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    }
)
c.subscribe([topic])
announced = False
while True:
    m = c.poll(0.2)
    if not announced and c.assignment():
        print(f"assigned {len(c.assignment())}", flush=True)
        announced = True
    if m is None or m.error():
        continue
    c.commit(message=m, asynchronous=False)
    print(m.value().decode(), flush=True)
