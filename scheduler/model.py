"""What a job is: its states, its record and its events, as every process sees them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from asyncpg import Record


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.DEAD, JobState.CANCELLED})
# What an admin may send back to the queue.
REPLAYABLE = frozenset({JobState.DEAD, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True, slots=True)
class Job:
    """A job's durable record."""

    id: UUID
    type: str
    topic: str
    owner_id: str | None
    state: JobState
    params: dict[str, Any]
    attempts: int
    max_attempts: int
    progress: int
    progress_message: str | None
    result: Any
    error: str | None
    cancel_requested: bool
    seq: int
    run_at: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_record(cls, row: Record) -> Job:
        return cls(
            id=row["id"],
            type=row["type"],
            topic=row["topic"],
            owner_id=row["owner_id"],
            state=JobState(row["state"]),
            params=row["params"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            progress=row["progress"],
            progress_message=row["progress_message"],
            result=row["result"],
            error=row["error"],
            cancel_requested=row["cancel_requested"],
            seq=row["last_seq"],
            run_at=row["run_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
        )


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One state change or progress report, as stored and as pushed to subscribers."""

    seq: int
    job_id: str
    topic: str
    owner_id: str | None
    state: str
    progress: int
    message: str | None
    at: float  # when it happened, Unix time

    @classmethod
    def from_record(cls, row: Record) -> JobEvent:
        return cls(
            seq=row["seq"],
            job_id=str(row["job_id"]),
            topic=row["topic"],
            owner_id=row["owner_id"],
            state=row["state"],
            progress=row["progress"],
            message=row["message"],
            at=row["created_at"].timestamp(),
        )

    def wire(self) -> dict[str, Any]:
        """The WebSocket message for this event (the owner stays on the server)."""
        return {
            "type": "job",
            "job_id": self.job_id,
            "seq": self.seq,
            "state": self.state,
            "progress": self.progress,
            "message": self.message,
            "topic": self.topic,
            "at": self.at,
        }


@dataclass(frozen=True, slots=True)
class Change:
    """An event about to be written: which job, its new state, progress and a note."""

    job_id: UUID
    topic: str
    owner_id: str | None
    state: str
    progress: int
    message: str | None = None
