"""Read-your-writes at the HTTP edge: the `X-Read-After` header in and out."""

from __future__ import annotations

from typing import TypeVar

from actors.errors import FieldError, InvalidInput
from server.routing import Reply
from storage.freshness import HEADER, Written, header_floor, header_value

T = TypeVar("T")

# For the API description of every route that answers a write with the header.
READ_AFTER = {
    HEADER: "The WAL position of this write: send it back on later requests to read at least "
    "this fresh data from any process"
}


def written(result: Written[T], status: int | None = None) -> Reply[T]:
    """A write's result, with the WAL position that shows it in the `X-Read-After` header:
    a client that sends it back never reads the write stale, from any process."""
    return Reply(result.value, {HEADER: header_value(result.position)}, status)


def client_floor(value: str | None) -> int:
    """The position a client asked its reads to see, from its `X-Read-After` header."""
    try:
        return header_floor(value)
    except ValueError as error:
        raise InvalidInput(f"bad {HEADER} header", [FieldError(HEADER, str(error))]) from None
