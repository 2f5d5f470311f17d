"""Roles and permissions: which role may do what, in one declarative table.

A route declares the permission it needs (`access="orders:manage"`); the authorization
middleware lets a caller through when one of its roles holds that permission. A permission no
route may use without being listed here: `check_declared` refuses an app whose routes name an
unknown one, so a typo cannot open (or close) a route by accident.

Ownership (a customer sees only their own orders) is the domain actor's business: a
permission says what kind of thing a caller may do, the actor says on which rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal, get_args

RoleName = Literal["customer", "staff", "admin"]
CUSTOMER: Final = "customer"
STAFF: Final = "staff"
ADMIN: Final = "admin"

ROLES: Final[tuple[str, ...]] = get_args(RoleName)
EVERYONE: Final = frozenset(ROLES)
STAFF_AND_ADMIN: Final = frozenset({STAFF, ADMIN})
ADMIN_ONLY: Final = frozenset({ADMIN})

# permission -> the roles that hold it. One line per permission, so additions merge cleanly.
PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    "account": EVERYONE,  # the caller's own account and session
    "orders:place": EVERYONE,  # place, read and cancel one's own orders
    "orders:manage": STAFF_AND_ADMIN,  # every order; status transitions
    "catalog:write": STAFF_AND_ADMIN,  # create, change and delete products
    "users:manage": ADMIN_ONLY,  # accounts, their roles and activation
    "audit:read": ADMIN_ONLY,  # the audit log of admin changes
    "jobs:submit": EVERYONE,  # submit, follow and cancel one's own jobs
    "jobs:reports": STAFF_AND_ADMIN,  # sales reports over every order
    "jobs:manage": STAFF_AND_ADMIN,  # every job; the dead-letter view
    "jobs:replay": ADMIN_ONLY,  # send a dead job back to the queue
    "files:read": EVERYONE,  # one's own uploaded files (staff and admin: anyone's)
    "files:write": EVERYONE,  # upload files; delete one's own (staff and admin: anyone's)
}


def permits(roles: Iterable[str], permission: str) -> bool:
    """Whether any of `roles` holds `permission` (unknown permissions are held by no one)."""
    holders = PERMISSIONS.get(permission)
    return holders is not None and not holders.isdisjoint(roles)


def permissions_of(role: str) -> list[str]:
    """The permissions `role` holds, sorted."""
    return sorted(name for name, holders in PERMISSIONS.items() if role in holders)


def check_declared(permissions: Iterable[str]) -> None:
    """Raise if any of `permissions` is missing from the table."""
    unknown = sorted(set(permissions) - PERMISSIONS.keys())
    if unknown:
        raise ValueError(f"routes use undeclared permissions: {', '.join(unknown)}")
