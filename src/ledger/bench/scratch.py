"""Where a benchmark runs: fresh temporary databases, a broker and uniquely named topics.

Nothing here touches the deployment's own data: SQLite databases are new files in a temporary
directory; PostgreSQL databases are created as `ledger_bench_<random>` on the configured server
and dropped afterwards. Topics get a per-run prefix and are deleted at the end.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import psycopg
import structlog

from ledger import limits
from ledger.kafka.broker import EmbeddedBroker, free_port, is_listening
from ledger.kafka.topics import ensure_topics, make_admin
from ledger.persistence.urls import DatabaseTarget, parse_database_url
from ledger.settings import Settings

log = structlog.get_logger(__name__)

BENCH_DATABASE_PREFIX = "ledger_bench_"
PRIVATE_BROKER_STOP_S = 1.0
"""Grace for a benchmark broker to exit on SIGTERM before it is killed: it keeps nothing worth
draining (Tansu would wait 5 s for connected clients)."""


def _postgres_url(target: DatabaseTarget, dbname: str) -> str:
    auth = quote(target.user, safe="")
    if target.password:
        auth += ":" + quote(target.password, safe="")
    return f"postgresql://{auth}@{target.host}:{target.port}/{dbname}"


@dataclass
class Scratch:
    """Temporary databases and topics for one benchmark run; `close()` removes them all."""

    settings: Settings
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    bootstrap: str = ""
    broker_kind: str = ""
    _configured: DatabaseTarget | None = None
    _directory: Path | None = None
    _databases: list[str] = field(default_factory=list)
    _topics: list[str] = field(default_factory=list)
    _broker: EmbeddedBroker | None = None
    _private_brokers: list[EmbeddedBroker] = field(default_factory=list)

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        """The database kind of the deployment (and so of every scratch database)."""
        return self.configured.kind

    @property
    def configured(self) -> DatabaseTarget:
        """The deployment's database target (only its server is used, never its data)."""
        if self._configured is None:
            self._configured = parse_database_url(self.settings.database_url)
        return self._configured

    @property
    def directory(self) -> Path:
        """A private temporary directory for this run (SQLite files, worker logs)."""
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix=f"ledger-bench-{self.run_id}-"))
        return self._directory

    def database_url(self, purpose: str) -> str:
        """A URL of a new, empty database of the deployment's kind."""
        if self.backend == "sqlite":
            return f"sqlite:///{self.directory / f'{purpose}.db'}"
        name = f"{BENCH_DATABASE_PREFIX}{self.run_id}_{purpose}"
        with self._admin() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        self._databases.append(name)
        return _postgres_url(self.configured, name)

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            self.configured.conninfo,
            autocommit=True,
            connect_timeout=limits.database_connect_timeout_s,
        )

    def start_broker(self) -> str:
        """Use the configured broker, else one already listening, else start one on a free port."""
        if self.settings.kafka_bootstrap:
            self.bootstrap = self.settings.kafka_bootstrap
            self.broker_kind = "external"
        elif is_listening("127.0.0.1", self.settings.broker_port):
            self.bootstrap = f"127.0.0.1:{self.settings.broker_port}"
            self.broker_kind = "embedded (already running)"
        else:
            self._broker = EmbeddedBroker(free_port(), log_path=self.directory / "broker.log")
            self._broker.start()
            self.bootstrap = self._broker.bootstrap
            self.broker_kind = "embedded (started for the run)"
        return self.bootstrap

    def private_broker(self, purpose: str) -> EmbeddedBroker:
        """A new embedded broker on a free port, for a phase that runs the ledger's own workers.

        Those use the real topic names (`payments.inbound`, `ledger.events`, ...), which must
        never be touched on the deployment's broker. Stop it with `stop_private_broker`.
        """
        broker = EmbeddedBroker(free_port(), log_path=self.directory / f"broker-{purpose}.log")
        broker.start()
        self._private_brokers.append(broker)
        return broker

    def stop_private_broker(self, broker: EmbeddedBroker) -> None:
        """Stop a broker from `private_broker` (its messages are gone with it)."""
        if broker in self._private_brokers:
            self._private_brokers.remove(broker)
        broker.stop(timeout_s=PRIVATE_BROKER_STOP_S)

    def topics(self, purpose: str) -> tuple[str, str]:
        """A fresh inbound topic and its dead-letter topic (the configured partition count)."""
        topic = f"bench-{self.run_id}-{purpose}.payments.inbound"
        dlq_topic = f"{topic}.dlq"
        ensure_topics(self.bootstrap, self.settings.partitions, names=(topic, dlq_topic))
        self._topics.extend((topic, dlq_topic))
        return topic, dlq_topic

    def co_partitioned_topics(self, purpose: str) -> tuple[str, str]:
        """A fresh facts topic and commands topic of equal partition counts (the account
        worker's pair), with their dead-letter topics (`<topic>.dlq`)."""
        facts = f"bench-{self.run_id}-{purpose}.payments.inbound"
        commands = f"bench-{self.run_id}-{purpose}.ledger.commands"
        names = (facts, commands, f"{facts}.dlq", f"{commands}.dlq")
        ensure_topics(self.bootstrap, self.settings.partitions, names=names)
        self._topics.extend(names)
        return facts, commands

    def close(self) -> None:
        """Delete the topics, drop the databases, stop our broker, remove the directory."""
        if self._topics and self._broker is None and self.bootstrap:
            try:
                admin = make_admin(self.bootstrap, client_id="ledger-bench-cleanup")
                try:
                    admin.delete_topics(self._topics)
                finally:
                    admin.close()
            except Exception as error:  # cleanup must not hide the run's result or error
                log.warning(
                    "could not delete benchmark topics", topics=self._topics, error=str(error)
                )
        self._topics.clear()
        for name in self._databases:
            try:
                with self._admin() as connection:
                    connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except psycopg.Error as error:
                log.warning("could not drop benchmark database", database=name, error=str(error))
        self._databases.clear()
        for broker in list(self._private_brokers):
            self.stop_private_broker(broker)
        if self._broker is not None:
            self._broker.stop(timeout_s=PRIVATE_BROKER_STOP_S)
            self._broker = None
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
