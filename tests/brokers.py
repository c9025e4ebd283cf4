"""Pytest fixtures for Kafka: a real embedded Tansu broker per session, or one per test.

Tansu starts in well under a second. Stopping one with clients still connected takes 5 s (it
drains them), so the fixtures stop with a short grace: the broker keeps nothing worth draining.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ledger.kafka.broker import EmbeddedBroker, free_port

STOP_GRACE_S = 1.0
"""How long a fixture broker gets to exit on SIGTERM before it is killed."""


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One embedded broker shared by the whole test session (use unique topic names)."""
    embedded = EmbeddedBroker(free_port())
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop(timeout_s=STOP_GRACE_S)


@pytest.fixture
def fresh_broker() -> Iterator[EmbeddedBroker]:
    """An embedded broker of this test's own, free to stop and restart."""
    embedded = EmbeddedBroker(free_port())
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop(timeout_s=STOP_GRACE_S)
