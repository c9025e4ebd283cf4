"""Leases on relay shares, so that two relays never publish the same share at once.

A relay holds at most one share at a time, and publishes only while it holds its lease:

- PostgreSQL: a session-level advisory lock, `pg_try_advisory_lock(class, share)`, taken on a
  connection of the relay's own that stays open while it relays. The lock dies with that
  connection, so a killed relay's share is free at once. Such a lock needs a real session:
  a pooler in transaction mode (PgBouncer) in between would hand it to other clients.
- SQLite: a row per share in `ledger_relay_leases` (share, holder, expires_at), taken by a
  compare-and-set in one transaction when free, expired or already ours, renewed every
  `limits.relay_lease_renew_interval_s` by a thread, and deleted on release. A killed relay's
  row expires after `limits.relay_lease_ttl_s`. Expiry is wall-clock time, which every process
  of one machine (and one SQLite file) shares.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
import zlib
from typing import Any, Protocol

import psycopg
import structlog

from ledger import limits
from ledger.persistence.database import Database, DatabaseUnavailable
from ledger.persistence.urls import DatabaseTarget

log = structlog.get_logger(__name__)

SQLITE_LEASES_DDL = (
    "CREATE TABLE IF NOT EXISTS ledger_relay_leases ("
    "share TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)"
)
"""The lease rows (SQLite only: PostgreSQL leases are advisory locks and need no table)."""

CONFIGURATION_LOCK_ID = 0
"""The advisory lock (second key) that serializes changes of the relay configuration; share
locks are never 0 since a configuration has at least one share."""


class LeaseLost(Exception):
    """The relay no longer holds its share's lease (its connection died, or its row expired)."""


def relay_lock_class(target: DatabaseTarget) -> int:
    """The first key of the relays' advisory locks: one per ledger schema of a database."""
    # Advisory locks are per database; two ledgers in two schemas of one must not collide.
    return zlib.crc32(f"ledger relay:{target.schema}".encode()) & 0x7FFF_FFFF


def share_lock_id(index: int, count: int) -> int:
    """The second key of share `index` of `count`'s advisory lock."""
    return (count << 16) | index


def share_lease_name(index: int, count: int) -> str:
    """The lease row's name of share `index` of `count`."""
    return f"ledger.events:{index}-of-{count}"


class RelayLeases(Protocol):
    """The leases of one relay process: it holds at most one share at a time."""

    def try_acquire(self, index: int, count: int) -> bool:
        """Take share `index` of `count` if no other relay holds it; True if taken."""
        ...

    def held(self) -> bool:
        """Whether the share taken is still ours (check before publishing a batch)."""
        ...

    def release(self) -> None:
        """Give the share up (a standby may take it at once)."""
        ...

    def close(self) -> None:
        """Release and close every connection."""
        ...


def open_relay_leases(target: DatabaseTarget) -> RelayLeases:
    """The lease mechanism of the database kind: advisory locks or lease rows."""
    if target.kind == "postgresql":
        return PostgresRelayLeases(target)
    return SQLiteRelayLeases(target)


class PostgresRelayLeases:
    """Share leases as session-level advisory locks on a connection of their own."""

    def __init__(self, target: DatabaseTarget) -> None:
        self.target = target
        self._lock_class = relay_lock_class(target)
        self._connection: psycopg.Connection[Any] | None = None
        self._held: tuple[int, int] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        if self._connection is None or self._connection.closed or self._connection.broken:
            try:
                self._connection = psycopg.connect(
                    self.target.conninfo,
                    autocommit=True,
                    connect_timeout=limits.database_connect_timeout_s,
                    application_name="ledger relay lease",
                )
            except psycopg.OperationalError as error:
                raise DatabaseUnavailable(f"{self.target.describe()}: {error}") from error
        return self._connection

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def try_acquire(self, index: int, count: int) -> bool:
        """Take the share's advisory lock without waiting; True if taken."""
        if self._held is not None:
            raise RuntimeError(f"this relay already holds share {self._held}")
        connection = self._connect()
        try:
            row = connection.execute(
                "SELECT pg_try_advisory_lock(%s, %s)",
                (self._lock_class, share_lock_id(index, count)),
            ).fetchone()
        except psycopg.OperationalError as error:
            self._drop()
            raise DatabaseUnavailable(f"{self.target.describe()}: {error}") from error
        if row is None or not row[0]:
            return False
        self._held = (index, count)
        return True

    def held(self) -> bool:
        """True while the lock's session lives (nobody else can unlock a session lock)."""
        if self._held is None or self._connection is None:
            return False
        try:
            self._connection.execute("SELECT 1")
        except psycopg.Error as error:
            log.warning("relay lease connection lost", error=str(error))
            self._held = None
            self._drop()
            return False
        return True

    def release(self) -> None:
        """Unlock; if the connection is gone, the lock went with it."""
        if self._held is None:
            return
        index, count = self._held
        self._held = None
        if self._connection is None:
            return
        try:
            self._connection.execute(
                "SELECT pg_advisory_unlock(%s, %s)", (self._lock_class, share_lock_id(index, count))
            )
        except psycopg.Error as error:
            log.debug("unlocking the relay lease failed: dropping its session", error=str(error))
            self._drop()

    def close(self) -> None:
        """Release the share and close the lease connection."""
        self.release()
        self._drop()


class SQLiteRelayLeases:
    """Share leases as rows with an expiry, renewed by a thread while held."""

    def __init__(self, target: DatabaseTarget, *, holder: str | None = None) -> None:
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._database = Database(target)
        self._database_lock = threading.Lock()  # used by the caller and the renewer thread
        self._share: str | None = None
        self._valid_until = 0.0
        """Monotonic time until which the share is surely ours: the last renewal's start plus
        the lease's time to live, less one renewal interval of margin."""
        self._stop_renewing = threading.Event()
        self._renewer: threading.Thread | None = None

    def _write(self, share: str, *, take: bool) -> bool:
        """Take (if free, expired or ours) or renew (if still ours) a lease; True if ours."""
        now = time.time()
        expires_at = now + limits.relay_lease_ttl_s
        with self._database_lock, self._database.transaction() as cursor:
            if take:
                cursor.execute(
                    "INSERT INTO ledger_relay_leases (share, holder, expires_at)"
                    " VALUES (%s, %s, %s) ON CONFLICT (share) DO UPDATE"
                    " SET holder = excluded.holder, expires_at = excluded.expires_at"
                    " WHERE ledger_relay_leases.holder = excluded.holder"
                    " OR ledger_relay_leases.expires_at < %s",
                    (share, self.holder, expires_at, now),
                )
            else:
                cursor.execute(
                    "UPDATE ledger_relay_leases SET expires_at = %s"
                    " WHERE share = %s AND holder = %s",
                    (expires_at, share, self.holder),
                )
            cursor.execute("SELECT holder FROM ledger_relay_leases WHERE share = %s", (share,))
            row = cursor.fetchone()
        return row is not None and row[0] == self.holder

    def try_acquire(self, index: int, count: int) -> bool:
        """Take the share's lease row if free, expired or ours; True if taken."""
        if self._share is not None:
            raise RuntimeError(f"this relay already holds share {self._share}")
        share = share_lease_name(index, count)
        started = time.monotonic()
        if not self._write(share, take=True):
            return False
        self._share = share
        self._valid_until = started + limits.relay_lease_ttl_s - limits.relay_lease_renew_interval_s
        self._stop_renewing = threading.Event()
        self._renewer = threading.Thread(
            target=self._renew_until_released,
            args=(share, self._stop_renewing),
            name="relay-lease-renewer",
            daemon=True,
        )
        self._renewer.start()
        return True

    def _renew_until_released(self, share: str, stop: threading.Event) -> None:
        while not stop.wait(limits.relay_lease_renew_interval_s):
            started = time.monotonic()
            try:
                ours = self._write(share, take=False)
            except Exception as error:  # the renewer must outlive any one failure
                # Still ours until it expires; `held()` turns false before anyone may take it.
                log.warning(
                    "renewing the relay lease failed",
                    share=share,
                    error_type=type(error).__name__,
                    error=str(error),
                )
                continue
            if not ours:
                log.warning("relay lease taken by another relay", share=share)
                self._valid_until = 0.0
                return
            self._valid_until = (
                started + limits.relay_lease_ttl_s - limits.relay_lease_renew_interval_s
            )

    def held(self) -> bool:
        """True while the last renewal is recent enough that no other relay may have taken it."""
        return self._share is not None and time.monotonic() < self._valid_until

    def release(self) -> None:
        """Stop renewing and delete the row (if that fails, it expires by itself)."""
        share, self._share = self._share, None
        if share is None:
            return
        self._stop_renewing.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        self._valid_until = 0.0
        try:
            with self._database_lock, self._database.transaction() as cursor:
                cursor.execute(
                    "DELETE FROM ledger_relay_leases WHERE share = %s AND holder = %s",
                    (share, self.holder),
                )
        except DatabaseUnavailable as error:
            log.warning("releasing the relay lease failed: it expires", error=str(error))

    def close(self) -> None:
        """Release the share and close the lease connection."""
        self.release()
        self._database.close()
