"""Who is calling: established by authentication, read by access checks, limits and actors."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. Actors receive it in messages to scope what it may see."""

    user_id: str
    roles: frozenset[str]
    token_id: str | None = None

    def has_role(self, *roles: str) -> bool:
        return not self.roles.isdisjoint(roles)
