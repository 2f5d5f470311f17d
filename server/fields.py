"""Field types shared by the request models of several route modules."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

# A row id in a path or query string (a bigint, as the database has it).
Id = Annotated[int, Field(gt=0, le=2**63 - 1)]
# The same in a JSON body, where a string or a float is refused rather than converted.
StrictId = Annotated[int, Field(strict=True, gt=0, le=2**63 - 1)]
# Page size and continuation of keyset-paginated listings.
Limit = Annotated[int, Field(ge=1, le=100)]
Cursor = Annotated[str, Field(min_length=1, max_length=400)]
# A person's or a thing's display name.
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
