"""The ceiling: a bare aiohttp app doing the same raw work as the service's routes, with no
middleware, actors or validation, on the same number of processes (SO_REUSEPORT, uvloop).

    python -m bench.ceiling --port 9000 --workers 2

Routes: `/noop`; `/redis/{id}` (one raw Redis GET, answered as is); `/pk/{id}` (one raw
asyncpg primary-key SELECT on a replica, encoded with orjson); `POST /order?user=ID` (the
service's order transaction, `storage.orders.PLACE`, in raw asyncpg on the primary, one
transaction per order).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator

import asyncpg
import orjson
import uvloop
from aiohttp import web
from redis.asyncio import Redis

from storage.orders import PLACE
from storage.redis import open_redis


class Resources:
    primary: asyncpg.Pool
    replica: asyncpg.Pool
    redis: Redis


RESOURCES = web.AppKey("resources", Resources)
PRODUCT = """
    SELECT id, sku, name, description, price_minor, currency, stock, active, created_at,
           updated_at
    FROM products WHERE id = $1
"""


async def noop(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def redis_get(request: web.Request) -> web.Response:
    body = await request.app[RESOURCES].redis.get(f"bench:product:{request.match_info['id']}")
    return web.Response(body=body, content_type="application/json")


async def pk_select(request: web.Request) -> web.Response:
    row = await request.app[RESOURCES].replica.fetchrow(PRODUCT, int(request.match_info["id"]))
    return web.Response(body=orjson.dumps(dict(row)), content_type="application/json")


async def order(request: web.Request) -> web.Response:
    lines = orjson.loads(await request.read())["items"]
    ids = [line["product_id"] for line in lines]
    quantities = [line["quantity"] for line in lines]
    user = int(request.query["user"])
    async with request.app[RESOURCES].primary.acquire() as conn:  # one order, as one batch
        row = await conn.fetchrow(PLACE, [user], [1] * len(ids), ids, quantities)
    return web.Response(body=orjson.dumps(dict(row)), status=201, content_type="application/json")


async def resources(app: web.Application) -> AsyncIterator[None]:
    """Pools like one actor's (10 connections each) and a Redis client like the service's
    (the same pool class and size), when configured."""
    primary = os.environ.get("DATABASE_URL")
    if primary is None:
        yield
        return
    replica = os.environ.get("DATABASE_REPLICA_URLS", "").split(",")[0] or primary
    found = app[RESOURCES]
    async with (
        asyncpg.create_pool(primary, min_size=1, max_size=10) as found.primary,
        asyncpg.create_pool(replica, min_size=1, max_size=10) as found.replica,
        open_redis(os.environ["REDIS_URL"], name="ceiling", size=32) as found.redis,
    ):
        yield


def build() -> web.Application:
    app = web.Application()
    app[RESOURCES] = Resources()
    app.cleanup_ctx.append(resources)
    app.router.add_get("/noop", noop)
    app.router.add_get("/redis/{id}", redis_get)
    app.router.add_get("/pk/{id}", pk_select)
    app.router.add_post("/order", order)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    for _ in range(args.workers - 1):
        if os.fork() == 0:
            break
    uvloop.install()
    web.run_app(
        build(), host="127.0.0.1", port=args.port, reuse_port=True, access_log=None, print=None
    )


if __name__ == "__main__":
    main()
