"""The read models this ledger keeps: every projection is registered here, once.

Part of the composition root (with the CLI and the workers): the only module that names the
projections. The projections worker runs every one, `ledger run` and `deploy_setup` create their
tables, `ledger projections rebuild|status` work on them by name.
"""

from __future__ import annotations

from ledger.generations import LiveProjection, LiveProjections, prepare_projections
from ledger.persistence.database import Database
from ledger.persistence.urls import DatabaseTarget
from ledger.projection import Projection
from ledger.storage import prepare_schema
from projections.balances import BalancesProjection
from projections.disputes import DisputesProjection
from projections.follow_ups import FollowUpsProjection
from projections.overpayments import OverpaymentsProjection
from projections.schedule import ScheduleProjection

BALANCES = BalancesProjection()
"""The balances read model (the benchmark reads its tables directly to time visibility)."""

OVERPAYMENTS = OverpaymentsProjection()
"""One row per overpayment, with its events (`ledger overpayments`)."""

FOLLOW_UPS = FollowUpsProjection()
"""The follow-up queue, shared by every feature that raises follow-ups (`ledger follow-ups`)."""

SCHEDULE = ScheduleProjection()
"""The scheduler's read model of due items (`ledger.scheduler` reads it)."""

DISPUTES = DisputesProjection()
"""One row per dispute, with its story (`ledger disputes`)."""

PROJECTIONS: tuple[Projection, ...] = (BALANCES, OVERPAYMENTS, FOLLOW_UPS, SCHEDULE, DISPUTES)


def names() -> list[str]:
    """The registered projections' names, in order."""
    return [projection.name for projection in PROJECTIONS]


def projection_named(name: str) -> Projection:
    """The registered projection of that name (LookupError naming the known ones otherwise)."""
    for projection in PROJECTIONS:
        if projection.name == name:
            return projection
    raise LookupError(f"unknown projection {name!r}; known: {', '.join(names())}")


def prepare_tables(database: Database) -> None:
    """Create each registered projection's live tables and position if missing."""
    prepare_projections(database, PROJECTIONS)


def prepare(target: DatabaseTarget) -> None:
    """The whole schema: the event store's tables, positions, and every read model's tables."""
    prepare_schema(target, then=prepare_tables)


def live_together(database: Database) -> LiveProjections:
    """Every registered projection, applied together: what the projections worker runs."""
    return LiveProjections(database, PROJECTIONS)


def live(database: Database, name: str) -> LiveProjection:
    """The live handler of one registered projection."""
    return LiveProjection(database, projection_named(name))
