"""Named failures. Domain code raises these; `server.problems` maps each to one HTTP status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class DomainError(Exception):
    """An expected outcome a caller must handle. It never counts as an actor crash."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError):
    """The thing asked for does not exist, or the caller may not know that it does."""


class Conflict(DomainError):
    """The request clashes with the current state (taken name, illegal transition, no stock)."""


class Unauthenticated(DomainError):
    """No valid credentials came with the request."""


class PermissionDenied(DomainError):
    """The caller is known but may not do this."""


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


class InvalidInput(DomainError):
    """Input that passed parsing but breaks a rule; names each bad field."""

    def __init__(self, detail: str, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(detail)
        self.errors = list(errors)


# -- commerce (issue 3) ---------------------------------------------------------------------


class OutOfStock(Conflict):
    """An order asked for more than is in stock; nothing was taken."""


class IllegalTransition(Conflict):
    """An order cannot move from its status to the one asked for."""


class IdempotencyKeyInUse(Conflict):
    """A request with the same Idempotency-Key is still being handled."""


class IdempotencyKeyReused(InvalidInput):
    """An Idempotency-Key already used for a different request."""


class RuntimeFailure(Exception):
    """Raised by the actor runtime itself, not by domain logic."""

    def __init__(self, actor: str, detail: str) -> None:
        super().__init__(f"{actor}: {detail}")
        self.actor = actor
        self.detail = detail


class Overloaded(RuntimeFailure):
    """The actor's mailbox is full: refused at once rather than queued without bound."""


class DeadlineExceeded(RuntimeFailure):
    """The message's time budget ran out before it was answered."""


class ActorStopped(RuntimeFailure):
    """The actor is stopping or stopped and takes no new messages."""


class DependencyUnavailable(RuntimeFailure):
    """A backing service (database, Redis) could not be reached."""


# -- files ------------------------------------------------------------------------------------


class TooLarge(DomainError):
    """The request's content is larger than allowed."""


class UnsupportedType(DomainError):
    """The content is not of a type this endpoint accepts (judged by its bytes, not by a header)."""


class Busy(DomainError):
    """Too much of this kind of work is in progress; the same request may succeed shortly."""


class ClientGone(DomainError):
    """The client stopped sending before the request was complete."""


class StorageUnavailable(DomainError):
    """The file store failed this request. An answer, not a crash: the client is fine and
    restarting the actor would not bring the store back; the same request may succeed later."""
