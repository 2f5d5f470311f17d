"""Keyset pagination: pages of results and the opaque cursors that continue them.

A cursor is the sort key of a page's last row (plus what the listing was sorted by), encoded
as URL-safe base64 JSON. The next page is the rows after that key: no OFFSET, so a page costs
the same however deep it is, and rows inserted meanwhile never shift or repeat one.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel

from actors.errors import FieldError, InvalidInput

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(*values: Any) -> str:
    raw = orjson.dumps(values, default=str)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, shape: Sequence[Callable[[Any], Any]]) -> tuple[Any, ...]:
    """The values of `cursor`, each passed through its converter in `shape`; `InvalidInput`
    naming the `cursor` field when it was not made by `encode_cursor` for this listing."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = orjson.loads(raw)
        if not isinstance(values, list) or len(values) != len(shape):
            raise ValueError("wrong shape")
        return tuple(convert(value) for convert, value in zip(shape, values, strict=True))
    except (ValueError, TypeError, binascii.Error):
        raise foreign_cursor() from None


def foreign_cursor() -> InvalidInput:
    """The error for a cursor this listing did not make."""
    return InvalidInput("invalid cursor", [FieldError("cursor", "not a cursor from this listing")])


def integer(value: Any) -> int:
    """A cursor converter: an integer and nothing that merely converts to one."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("not an integer")
    return value


def text(value: Any) -> str:
    """A cursor converter: a string."""
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def timestamp(value: Any) -> datetime:
    """A cursor converter: an ISO 8601 timestamp."""
    if not isinstance(value, str):
        raise TypeError("not a timestamp")
    return datetime.fromisoformat(value)


def page_of(items: list[T], limit: int, key: Callable[[T], tuple[Any, ...]]) -> Page[T]:
    """A page from up to `limit + 1` rows: the extra row only says that there is more."""
    if len(items) <= limit:
        return Page(items=items)
    items = items[:limit]
    return Page(items=items, next_cursor=encode_cursor(*key(items[-1])))
