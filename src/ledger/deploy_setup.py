"""`python -m ledger.deploy_setup`: create the topics and the schema once, for a deployment.

Workers never create tables (several processes creating them at once can fail on PostgreSQL),
so a deployment runs this first, as `ledger run` does on a single machine.
"""

from __future__ import annotations

from ledger import read_models
from ledger.kafka.broker import resolve_bootstrap
from ledger.kafka.topics import ensure_topics
from ledger.logging import configure_logging
from ledger.persistence.database import Database
from ledger.persistence.urls import parse_database_url
from ledger.settings import Settings, load_settings
from ledger.storage import prepare_schema


def prepare_deployment(bootstrap: str, settings: Settings) -> None:
    """Create the topics (explicit partition counts) and every table, once."""
    ensure_topics(bootstrap, settings.partitions)
    target = parse_database_url(settings.database_url)
    prepare_schema(target)
    database = Database(target)
    try:
        read_models.prepare_tables(database)
    finally:
        database.close()


def main() -> None:
    """Create topics and schema for the configured broker and database."""
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    prepare_deployment(resolve_bootstrap(settings.kafka_bootstrap, settings.broker_port), settings)


if __name__ == "__main__":
    main()
