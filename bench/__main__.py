"""`make bench`: every row beside its ceiling, measured in the same run on the same machine.

python -m bench [--seconds 3] [--rounds 3] [--connections 64,256] [--workers N] [--only commerce]
"""

from __future__ import annotations

import argparse
import os
import sys

from bench import commerce, foundation, jobs, observability, ratelimit
from bench.run import Bench, bench_services, print_header, servers, summary

SUITES = (foundation.rows, ratelimit.rows, commerce.rows, observability.rows, jobs.rows)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--seconds", type=float, default=3.0, help="per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per side of a row")
    parser.add_argument("--connections", default="64,256")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", help="comma-separated suites (module names), e.g. commerce")
    args = parser.parse_args()
    suites = [s for s in SUITES if not args.only or s.__module__.split(".")[-1] in args.only]
    connections = tuple(int(c) for c in args.connections.split(","))
    with bench_services("bench") as settings, servers(settings, args.workers) as (server, top):
        print_header(args.workers, args.seconds, args.rounds)
        bench = Bench(server, top, settings, args.seconds, connections, args.workers, args.rounds)
        rows = [row for suite in suites for row in suite(bench)]
    return summary(rows)


if __name__ == "__main__":
    sys.exit(main())
