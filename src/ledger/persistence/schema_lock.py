"""One schema preparation at a time per database, across processes.

PostgreSQL does not serialize concurrent `CREATE TABLE IF NOT EXISTS` (or `CREATE INDEX IF NOT
EXISTS`, `CREATE TYPE`) of one name: the loser fails with `duplicate key value violates unique
constraint "pg_type_typname_nsp_index"` or `tuple concurrently updated`. Every preparation holds
a session-level advisory lock in a connection of its own, so the second one waits and then finds
everything in place. SQLite serializes writers itself: nothing to hold there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import structlog

from ledger import limits
from ledger.persistence.database import DatabaseUnavailable
from ledger.persistence.urls import DatabaseTarget

log = structlog.get_logger(__name__)

SCHEMA_LOCK_KEY = 0x6C65_6467_6572_0001
"""The advisory lock key: "ledger" in ASCII, then 1. Advisory keys are per database."""


class SchemaLockTimeout(DatabaseUnavailable):
    """Another process held the schema lock longer than `limits.schema_lock_wait_max_s`."""


@contextmanager
def schema_lock(target: DatabaseTarget) -> Iterator[None]:
    """Hold the database's schema lock for the block (PostgreSQL; nothing to do on SQLite)."""
    if target.kind != "postgresql":
        yield
        return
    try:
        connection = psycopg.connect(
            target.conninfo,
            autocommit=True,
            connect_timeout=limits.database_connect_timeout_s,
        )
    except psycopg.OperationalError as error:
        raise DatabaseUnavailable(f"{target.describe()}: {error}") from error
    try:
        wait_ms = int(limits.schema_lock_wait_max_s * 1000)
        connection.execute(f"SET lock_timeout = {wait_ms}")
        try:
            connection.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
        except psycopg.errors.LockNotAvailable as error:
            raise SchemaLockTimeout(
                f"{target.describe()}: another process has been preparing the schema for over"
                f" {limits.schema_lock_wait_max_s:g}s"
            ) from error
        log.debug("schema lock held", database=target.describe())
        yield
        # Closing the session would release it too; unlocking says so and frees it at once.
        connection.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))
    finally:
        connection.close()
