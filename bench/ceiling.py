"""The ceiling: a bare aiohttp app doing the same raw work as the service's routes, with no
middleware, actors or validation, on the same number of processes (SO_REUSEPORT, uvloop).

    python -m bench.ceiling --port 9000 --workers 2
"""

from __future__ import annotations

import argparse
import os

import uvloop
from aiohttp import web


async def noop(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build() -> web.Application:
    app = web.Application()
    app.router.add_get("/noop", noop)
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
