"""The periodic maintenance job (run by `backend scheduler`): partitions and retention.

Time-partitioned tables get their coming months' partitions ahead of need, and lose whole
partitions once past retention (dropping a partition costs nothing, unlike deleting rows).
Finished jobs past retention are deleted in small batches, with the files they produced.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from scheduler.context import JobContext
from scheduler.registry import NoParams, job_type
from storage import files as files_sql
from storage import jobs

# Partitioned tables and how many days of rows each keeps (None: JOB_RETENTION_DAYS).
PARTITIONED: dict[str, int | None] = {"job_events": None}
MONTHS_AHEAD = 2
DELETE_BATCH = 1000


@job_type("maintenance", topic="maintenance", params=NoParams, max_attempts=3, timeout=3600)
async def maintenance(ctx: JobContext, params: NoParams) -> dict[str, Any]:
    settings, db, files = ctx.resources.settings, ctx.resources.db, ctx.resources.files
    created = dropped = 0
    for table, days in PARTITIONED.items():
        async with db.primary() as conn:
            made, gone = await jobs.maintain_partitions(
                conn, table, MONTHS_AHEAD, days or settings.job_retention_days
            )
        created, dropped = created + made, dropped + gone
    await ctx.progress(50, "partitions checked")
    deleted = 0
    while True:
        async with db.primary() as conn, conn.transaction():
            rows = await jobs.delete_finished(conn, settings.job_retention_days, DELETE_BATCH)
            for row in rows:  # the files they produced go with them (reports)
                result = row["result"]
                if isinstance(result, dict) and isinstance(result.get("file_id"), str):
                    for gone in await files_sql.delete(conn, UUID(result["file_id"])):
                        await files.delete(gone["storage_key"])
        deleted += len(rows)
        if len(rows) < DELETE_BATCH:
            break
    return {"partitions_created": created, "partitions_dropped": dropped, "jobs_deleted": deleted}
