"""The ledger's worker processes (`python -m ledger.workers NAME`): ingest, relay, projections,
scheduler.

Part of the composition root: it wires the Kafka adapters, the event store, the ingest service
and the projections together. Each worker stops cleanly on SIGTERM or SIGINT, finishing the
batch in hand.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
from types import FrameType
from typing import Any

import structlog

from consumers.ingest import IngestConsumer
from ledger import read_models
from ledger.clock import SystemClock
from ledger.commands import CommandService
from ledger.domain.policy import PolicyError
from ledger.gc_tuning import tune_gc_for_throughput
from ledger.ingest import IngestService
from ledger.kafka.broker import resolve_bootstrap
from ledger.kafka.clients import ProducerStopped, ResilientProducer, check_crc32c
from ledger.kafka.topics import LEDGER_COMMANDS, PAYMENTS_INBOUND
from ledger.logging import bind_process_context, configure_logging
from ledger.policy_file import load_policy
from ledger.relay import run_relay
from ledger.scheduler import run_scheduler
from ledger.settings import Settings, SettingsError, load_settings
from ledger.storage import open_storage
from ledger.tailing import run_tails

WORKER_NAMES = ("ingest", "relay", "projections", "scheduler")

log = structlog.get_logger(__name__)


def install_stop_handlers(stop: threading.Event) -> None:
    """Turn SIGTERM and SIGINT into a stop request."""

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def ingest_consumer(**options: Any) -> IngestConsumer:
    """The account worker's consumer, built from `options` (the benchmark runs it on one topic
    of its own).

    Wired here, in the composition root, so that nothing else in `ledger` imports `consumers`.
    """
    return IngestConsumer(**options)


def run_worker(name: str, settings: Settings, stop: threading.Event) -> None:
    """Run one worker until `stop` is set."""
    structlog.contextvars.bind_contextvars(worker=name)
    storage = open_storage(settings)
    try:
        if name == "ingest":
            check_crc32c()
            bootstrap = resolve_bootstrap(settings.kafka_bootstrap, settings.broker_port)
            producer = ResilientProducer(bootstrap, stop=stop)
            service = IngestService(
                storage.store, policy=load_policy(settings.policy), clock=SystemClock()
            )
            # The account worker: facts and staff commands of the same accounts, co-partitioned.
            consumer = ingest_consumer(
                bootstrap=bootstrap,
                services={
                    PAYMENTS_INBOUND: service,
                    LEDGER_COMMANDS: CommandService(service),
                },
                dead_letters=producer,
                group_id=f"{settings.consumer_group_prefix}-ingest",
                stop=stop,
            )
            log.info("ingest started", bootstrap=bootstrap, database=storage.target.describe())
            tune_gc_for_throughput()
            try:
                consumer.run()
            finally:
                producer.close()
        elif name == "relay":
            tune_gc_for_throughput()  # kafka-python allocates a dozen objects a message
            run_relay(storage, settings, stop)
        elif name == "projections":
            projections = read_models.live_together(storage.database)
            log.info("projections started", positions=projections.positions())
            tune_gc_for_throughput()
            run_tails(storage.store, [projections], stop)
        elif name == "scheduler":
            bootstrap = resolve_bootstrap(settings.kafka_bootstrap, settings.broker_port)
            run_scheduler(
                storage.database, bootstrap, load_policy(settings.policy), SystemClock(), stop
            )
        else:
            raise ValueError(f"unknown worker {name!r}; expected one of {WORKER_NAMES}")
    finally:
        storage.close()
    log.info("worker stopped")


def main(argv: list[str] | None = None) -> int:
    """Entry point of a worker process."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in WORKER_NAMES:
        print(f"usage: python -m ledger.workers {{{'|'.join(WORKER_NAMES)}}}", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
        # Checked by every worker, before anything starts: one line and exit 2, as `ledger run`
        # reports it, rather than a traceback from the first worker that reads the policy.
        load_policy(settings.policy)
    except (SettingsError, PolicyError) as error:
        print(f"ledger: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    bind_process_context(worker=args[0])
    # `kill -USR1 <pid>` writes every thread's stack to stderr: for a worker that seems stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    stop = threading.Event()
    install_stop_handlers(stop)
    try:
        run_worker(args[0], settings, stop)
    except ProducerStopped as stopped:
        if not stop.is_set():
            raise
        # A clean stop: the batch in hand was not committed and is redone after the restart.
        log.info("worker stopped with a batch undelivered", reason=str(stopped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
