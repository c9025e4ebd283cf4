"""Pytest fixtures for databases: a SQLite file per test, and a fresh PostgreSQL database per test.

PostgreSQL is found at LEDGER_TEST_DATABASE_URL (default: the local server). When it cannot be
reached the tests fail loudly; they never skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ledger.persistence.urls import parse_database_url

PG_ADMIN_URL = os.environ.get(
    "LEDGER_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _admin_connection() -> psycopg.Connection[tuple[object, ...]]:
    target = parse_database_url(PG_ADMIN_URL)
    try:
        return psycopg.connect(target.conninfo, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL unreachable at {PG_ADMIN_URL} (LEDGER_TEST_DATABASE_URL): {error}")


def create_postgres_database() -> str:
    """Create an empty database for one test and return its URL."""
    name = f"ledger_test_{uuid.uuid4().hex[:12]}"
    with _admin_connection() as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    target = parse_database_url(PG_ADMIN_URL)
    auth = target.user + (f":{target.password}" if target.password else "")
    return f"postgresql://{auth}@{target.host}:{target.port}/{name}"


def drop_postgres_database(url: str) -> None:
    """Drop a test database, disconnecting whoever still uses it."""
    name = parse_database_url(url).dbname
    with _admin_connection() as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def empty_database(url: str) -> None:
    """Drop everything stored in a test database, so the next use starts from nothing.

    For a test that uses its database more than once (each example of a property test); every
    connection to it must be closed first.
    """
    target = parse_database_url(url)
    if target.kind == "sqlite":
        assert target.sqlite_path is not None, url
        for suffix in ("", "-wal", "-shm"):
            Path(f"{target.sqlite_path}{suffix}").unlink(missing_ok=True)
        return
    with psycopg.connect(target.conninfo, autocommit=True, connect_timeout=5) as connection:
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (PostgreSQL-only behaviour)."""
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)
