"""The RabbitMQ tutorial's consumer: worker.py of "Work queues" in Python
with pika, as its users run it (prefetch 1, a basic_ack per message),
with its simulated work (a second per dot) and its prints taken out, so
that it does what warren's noop handler does. It stops after n messages
and prints the seconds they took. It does not declare the queue: the
benchmark has (a quorum queue's arguments would not match the tutorial's
declaration).

argv: amqp-url queue n
"""
import sys
import time

import pika

url, queue, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
got = 0


def callback(ch, method, properties, body):
    global got
    ch.basic_ack(delivery_tag=method.delivery_tag)
    got += 1
    if got == n:
        ch.stop_consuming()


channel.basic_qos(prefetch_count=1)
channel.basic_consume(queue=queue, on_message_callback=callback)
start = time.monotonic()
channel.start_consuming()
print(f"{time.monotonic() - start:.6f}")
connection.close()
