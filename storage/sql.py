"""Composing a statement from fixed fragments, with every value passed as a parameter."""

from __future__ import annotations

from typing import Any


class Params:
    """Collects values and hands out their placeholders: `where.append(f"x = {p(v)}")`."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"
