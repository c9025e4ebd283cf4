"""Checkpoints of a SQLite event store's write-ahead log, in a thread beside the writer.

SQLite in WAL mode appends each commit's pages to the log; by default the connection that
commits past 1,000 log pages then copies the log into the database file itself, inside that
commit ("auto-checkpoint"). The ingest's commits touch hundreds of index pages each (an event's
key is its account's random uuid, an idempotency key lands anywhere), so the account worker paid
a checkpoint every few batches on its only thread: 5-15% of the isolated ingest's time.

The process that writes events checkpoints in a thread of its own instead: its writing
connection turns auto-checkpoints off, and after each commit this thread runs a PASSIVE
checkpoint on its own connection (Python's sqlite3 releases the GIL while SQLite works, so it runs
on the other core while the next batch is prepared). PASSIVE never blocks readers or the writer:
what a reader still needs stays in the log for the next round. Durability is unchanged: a commit
is synced to the log (synchronous=FULL) before it returns, checkpoint or not.
"""

from __future__ import annotations

import sqlite3
import threading

import structlog

from ledger import limits

log = structlog.get_logger(__name__)


class WalCheckpointer:
    """Runs `PRAGMA wal_checkpoint(PASSIVE)` after writes (and at least every interval)."""

    def __init__(self, path: str, *, interval_s: float = limits.sqlite_checkpoint_interval_s):
        self.path = path
        self.interval_s = interval_s
        self.checkpoints = 0
        """Checkpoints run (a test reads it)."""
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="sqlite-wal-checkpoints", daemon=True
        )
        self._thread.start()

    def written(self) -> None:
        """A commit added to the log: checkpoint soon."""
        self._wake.set()

    def close(self) -> None:
        """Stop after a last checkpoint (the log is left as small as readers allow)."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=limits.sqlite_busy_timeout_s + 1)

    def _run(self) -> None:
        try:
            connection = sqlite3.connect(
                self.path,
                uri=self.path.startswith("file:"),
                timeout=limits.sqlite_busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as error:
            log.error("WAL checkpoints not started", database=self.path, error=str(error))
            return
        try:
            while True:
                self._wake.wait(self.interval_s)
                self._wake.clear()
                self._checkpoint(connection)
                if self._stopping.is_set():
                    return
        finally:
            connection.close()

    def _checkpoint(self, connection: sqlite3.Connection) -> None:
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as error:  # a busy lock or a full disk: try again next round
            log.warning("WAL checkpoint failed", database=self.path, error=str(error))
            self._stopping.wait(self.interval_s)
            return
        self.checkpoints += 1
