"""Database URLs: `sqlite:///relative`, `sqlite:////absolute` or `postgresql://...`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit


class DatabaseUrlError(ValueError):
    """A database URL the ledger cannot use."""


@dataclass(frozen=True)
class DatabaseTarget:
    """Where the event store and read models live."""

    kind: Literal["sqlite", "postgresql"]
    sqlite_path: Path | None = None
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: str = ""
    dbname: str = "postgres"
    schema: str = ""

    @property
    def conninfo(self) -> str:
        """A libpq connection string (PostgreSQL only)."""
        parts = {
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "dbname": self.dbname,
        }
        if self.password:
            parts["password"] = self.password
        return " ".join(f"{key}='{value}'" for key, value in parts.items())

    def describe(self) -> str:
        """A printable location, without any password."""
        if self.kind == "sqlite":
            return f"sqlite:{self.sqlite_path}"
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"


def parse_database_url(url: str, *, cwd: Path | None = None) -> DatabaseTarget:
    """Parse a database URL, resolving relative SQLite paths against the working directory."""
    if url.startswith("sqlite:///"):
        raw = url[len("sqlite:///") :]
        if not raw:
            raise DatabaseUrlError(f"no file in {url!r}")
        path = Path(raw) if raw.startswith("/") else (cwd or Path.cwd()) / raw
        return DatabaseTarget(kind="sqlite", sqlite_path=path.resolve())
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        query = dict(pair.split("=", 1) for pair in parts.query.split("&") if "=" in pair)
        return DatabaseTarget(
            kind="postgresql",
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
            dbname=unquote(parts.path.lstrip("/")) or "postgres",
            schema=query.get("schema", ""),
        )
    raise DatabaseUrlError(
        f"unsupported database URL {url!r}: use sqlite:///path or postgresql://user@host/db"
    )
