"""Pytest fixtures for Kafka: a real embedded Tansu broker per session, or one per test.

Tansu starts in well under a second. Stopping one with clients still connected takes 5 s (it
drains them), so the fixtures stop with a short grace: the broker keeps nothing worth draining.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from ledger.kafka.broker import EmbeddedBroker

STOP_GRACE_S = 1.0
"""How long a fixture broker gets to exit on SIGTERM before it is killed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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
