"""Password hashing with Argon2id, off the event loop.

Argon2 is slow on purpose (tens of milliseconds and megabytes per hash). Run on the event
loop it would stall every other request of the process, so hashes run on a small thread pool
of their own (argon2-cffi releases the GIL while it works); the pool's size bounds how many
run at once, and callers beyond that wait their turn without blocking anyone else.

An unknown account is checked against a dummy hash made with the same parameters, so a wrong
e-mail address costs as long as a wrong password and both get the same answer.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from config import Settings
from observability import metrics


class Passwords:
    """Hashes and verifies passwords on a bounded thread pool."""

    def __init__(self, *, time_cost: int, memory_kib: int, parallelism: int, threads: int) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            type=argon2.Type.ID,
        )
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="argon2")
        self._dummy: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Passwords:
        return cls(
            time_cost=settings.password_time_cost,
            memory_kib=settings.password_memory_kib,
            parallelism=settings.password_parallelism,
            threads=settings.password_hash_threads,
        )

    async def prepare(self) -> None:
        """Make the dummy hash (once, at start, so no login pays for it)."""
        self._dummy = await self.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await self._run("hash", self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether `password` matches `stored`; with no stored hash, the same work is done
        against the dummy hash and the answer is no."""
        if stored is None:
            if self._dummy is None:
                await self.prepare()
            await self._run("verify", _matches, self._hasher, self._dummy, password)
            return False
        return await self._run("verify", _matches, self._hasher, stored, password)

    def needs_rehash(self, stored: str) -> bool:
        """Whether `stored` was made with other parameters than today's (rehash on login)."""
        try:
            return self._hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, operation: str, fn: Any, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            metrics.PASSWORD_HASHING.labels(operation).observe(time.perf_counter() - started)


def _matches(hasher: argon2.PasswordHasher, stored: str, password: str) -> bool:
    try:
        return hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False
