"""The ceiling for job throughput: bare taskiq-redis (stream broker, JSON), a no-op task that
records its latency in Redis, no job records and no events.

    python -m bench.taskiq_ceiling <redis url> <stream> <counter key> --metrics-port N
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import uvloop
from redis.asyncio import Redis
from taskiq.receiver import Receiver
from taskiq.serializers import ORJSONSerializer
from taskiq_redis import RedisStreamBroker

from observability.exporter import serve_metrics


def broker_for(url: str, stream: str) -> RedisStreamBroker:
    broker = RedisStreamBroker(url, queue_name=stream, consumer_id="0", xread_block=1000)
    return broker.with_serializer(ORJSONSerializer())


async def work(url: str, stream: str, counter: str, port: int) -> None:
    broker = broker_for(url, stream)
    redis = Redis.from_url(url)

    @broker.task(task_name="ceiling_noop")
    async def noop(sent: float) -> None:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.rpush(counter, (time.time() - sent) * 1000)  # milliseconds from send to run
            await pipe.execute()

    broker.is_worker_process = True
    await broker.startup()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with serve_metrics(port):  # its answering also tells the bench it is ready
        await Receiver(broker, max_async_tasks=64, run_startup=False).listen(stop)
    await broker.shutdown()


if __name__ == "__main__":
    url, stream, counter, _, port = sys.argv[1:6]
    uvloop.run(work(url, stream, counter, int(port)))
