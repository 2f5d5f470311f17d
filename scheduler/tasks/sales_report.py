"""The sales report: a CSV of the orders placed in a date range, for staff.

It reads from a replica (falling back to the primary) through a server-side cursor in one
repeatable-read snapshot, so memory stays flat and the counts agree with the rows; it streams
the CSV into the file store as it goes, reporting progress, and records the CSV as a file owned
by whoever asked, downloadable at `result.download_url` (`GET /api/v1/files/{id}`).

Idempotent: the file's id is the job's and its key is derived from it, so a run that starts
again after a crash rewrites the same object (atomically) and finds the file row if the first
run got that far.
"""

from __future__ import annotations

import csv
import hashlib
import io
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from scheduler.context import JobContext
from scheduler.registry import PermanentFailure, job_type
from server.routing import Input
from storage import files as files_sql
from storage import reports
from storage.postgres import Connection

MAX_DAYS = 366
CHUNK_ROWS = 500
HEADER = (
    "order_id",
    "created_at",
    "user_id",
    "status",
    "currency",
    "total_minor",
    "lines",
    "quantity",
)


class ReportParams(Input):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    start: date = Field(alias="from", description="first day (UTC), included")
    end: date = Field(alias="to", description="last day (UTC), included")

    @model_validator(mode="after")
    def _a_range(self) -> ReportParams:
        if self.end < self.start:
            raise ValueError("`to` is before `from`")
        if (self.end - self.start).days >= MAX_DAYS:
            raise ValueError(f"at most {MAX_DAYS} days per report")
        return self


class Tally:
    """What the CSV held, counted while it streamed."""

    def __init__(self) -> None:
        self.rows = 0
        self.totals: dict[str, int] = {}
        self.digest = hashlib.sha256()


@job_type(
    "sales_report",
    topic="reports",
    params=ReportParams,
    permission="jobs:reports",
    max_attempts=3,
    timeout=3600,
)
async def sales_report(ctx: JobContext, params: ReportParams) -> dict[str, Any]:
    if ctx.owner_id is None:
        raise PermanentFailure("a report belongs to the user who asked for it")
    db = ctx.resources.db
    file_id, key = ctx.job_id, f"reports/{ctx.job_id}.csv"
    start = datetime.combine(params.start, time.min, tzinfo=UTC)
    end = datetime.combine(params.end + timedelta(days=1), time.min, tzinfo=UTC)
    tally = Tally()

    async def export(conn: Connection) -> int:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            expected = await reports.count_orders(conn, start, end)
            await ctx.progress(0, f"{expected} orders to export")
            chunks = _csv(ctx, reports.orders_between(conn, start, end), expected, tally)
            return await ctx.resources.files.put(key, chunks)

    size = await db.read(export)
    await ctx.progress(100, f"{tally.rows} orders exported")
    name = f"sales-{params.start.isoformat()}-{params.end.isoformat()}.csv"
    async with db.primary() as conn:
        if await files_sql.get(conn, file_id) is None:
            await files_sql.insert(
                conn,
                file_id=file_id,
                owner_id=int(ctx.owner_id),
                original_name=name,
                content_type="text/csv",
                size=size,
                sha256=tally.digest.digest(),
                storage_key=key,
            )
    return {
        "file_id": str(file_id),
        "download_url": f"/api/v1/files/{file_id}",
        "name": name,
        "rows": tally.rows,
        "bytes": size,
        "totals_minor": tally.totals,
        "from": params.start.isoformat(),
        "to": params.end.isoformat(),
    }


async def _csv(ctx: JobContext, rows: Any, expected: int, tally: Tally) -> Any:
    """The CSV as chunks of `CHUNK_ROWS` rows; progress after each chunk."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    async for row in rows:
        writer.writerow(
            (
                row["id"],
                row["created_at"].isoformat(),
                row["user_id"],
                row["status"],
                row["currency"],
                row["total_minor"],
                row["lines"],
                row["quantity"],
            )
        )
        tally.rows += 1
        tally.totals[row["currency"]] = tally.totals.get(row["currency"], 0) + row["total_minor"]
        if tally.rows % CHUNK_ROWS == 0:
            yield _take(buffer, tally)
            await ctx.progress(
                min(99, tally.rows * 100 // max(1, expected)), f"{tally.rows} of {expected} orders"
            )
    yield _take(buffer, tally)


def _take(buffer: io.StringIO, tally: Tally) -> bytes:
    data = buffer.getvalue().encode()
    buffer.seek(0)
    buffer.truncate()
    tally.digest.update(data)
    return data
