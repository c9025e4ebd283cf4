"""Where each relay share stands, and the relay configuration those positions belong to.

Each share of `ledger.events` keeps its own position in `ledger_positions`, named after the
share and the configuration: `outbox:ledger.events:share-<k>-of-<N>:partitions-<P>` (N shares
over P partitions). The configuration in use is one row of `ledger_relay_configuration`.

A relay that finds another configuration recorded (a new `LEDGER_RELAY_WORKERS`, or a changed
partition count) moves to its own in one serialized transaction: every share of the new
configuration starts from the lowest position among the previous configuration's shares, so
nothing is skipped (events between the lowest and the highest old positions go out again).
Before any configuration was recorded, the previous one is the single relay of earlier versions,
whose position is `outbox:ledger.events`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.persistence.database import Cursor, Database
from ledger.persistence.positions import read_position, reset_position
from ledger.persistence.relay_leases import CONFIGURATION_LOCK_ID, relay_lock_class

RELAYED_TOPIC = "ledger.events"
LEGACY_POSITION_NAME = "outbox:ledger.events"
"""The one relay's position before relays had shares."""

CONFIGURATION_DDL = (
    "CREATE TABLE IF NOT EXISTS ledger_relay_configuration ("
    "topic TEXT PRIMARY KEY, shares INTEGER NOT NULL, partitions INTEGER NOT NULL)"
)


@dataclass(frozen=True)
class RelayConfiguration:
    """How the relays split a topic: `shares` shares of its `partitions` partitions."""

    shares: int
    partitions: int

    def position_name(self, index: int) -> str:
        """The stored position of share `index` under this configuration."""
        return share_position_name(index, self.shares, self.partitions)

    def position_names(self) -> list[str]:
        """The stored positions of every share."""
        return [self.position_name(index) for index in range(self.shares)]


def share_position_name(index: int, count: int, partitions: int) -> str:
    """The stored position of share `index` of `count` over `partitions` partitions."""
    return f"{LEGACY_POSITION_NAME}:share-{index}-of-{count}:partitions-{partitions}"


@dataclass(frozen=True)
class Transition:
    """A change of relay configuration, as made by `enter_configuration`."""

    previous: RelayConfiguration | None
    """None: the single relay of earlier versions."""
    start: int
    """The position every share of the new configuration starts after."""


def read_configuration(cursor: Cursor) -> RelayConfiguration | None:
    """The configuration recorded last; None if no relay with shares has run yet."""
    cursor.execute(
        "SELECT shares, partitions FROM ledger_relay_configuration WHERE topic = %s",
        (RELAYED_TOPIC,),
    )
    row = cursor.fetchone()
    return None if row is None else RelayConfiguration(int(row[0]), int(row[1]))


def enter_configuration(database: Database, configuration: RelayConfiguration) -> Transition | None:
    """Make `configuration` the recorded one, its shares starting at the lowest old position.

    Nothing changes (None) when it is already recorded. Serialized against other relays doing
    the same (an advisory lock on PostgreSQL; SQLite's write lock), so the first relay of a new
    configuration moves it and the others find it moved.
    """
    with database.transaction() as cursor:
        if database.kind == "postgresql":
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)",
                (relay_lock_class(database.target), CONFIGURATION_LOCK_ID),
            )
        previous = read_configuration(cursor)
        if previous == configuration:
            return None
        old_names = [LEGACY_POSITION_NAME] if previous is None else previous.position_names()
        start = min(read_position(cursor, name) for name in old_names)
        for name in configuration.position_names():
            reset_position(cursor, name, start)
        cursor.execute(
            "INSERT INTO ledger_relay_configuration (topic, shares, partitions)"
            " VALUES (%s, %s, %s) ON CONFLICT (topic) DO UPDATE"
            " SET shares = excluded.shares, partitions = excluded.partitions",
            (RELAYED_TOPIC, configuration.shares, configuration.partitions),
        )
    return Transition(previous, start)


def relay_position(cursor: Cursor) -> int:
    """How far every share of the recorded configuration has published: the lowest position."""
    configuration = read_configuration(cursor)
    names = [LEGACY_POSITION_NAME] if configuration is None else configuration.position_names()
    return min(read_position(cursor, name) for name in names)
