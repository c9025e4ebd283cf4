"""`ledger run`: one supervisor for every process on a single machine.

It uses (or starts) the broker, creates the topics and the schema once (retrying through an
outage or a race with back-off), then starts each worker as a child process that dies with it
(parent-death signal), restarts a worker that crashes, and stops them all on SIGINT/SIGTERM.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from ledger import limits
from ledger.deploy_setup import prepare_deployment_patiently
from ledger.kafka.broker import EmbeddedBroker, is_listening, set_parent_death_signal
from ledger.policy_file import load_policy
from ledger.settings import Settings

log = structlog.get_logger(__name__)

DEFAULT_WORKERS = ("ingest", "relay", "projections", "scheduler")


class SupervisorFailed(RuntimeError):
    """A worker kept crashing."""


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)


class Supervisor:
    """Starts the broker (if needed), the schema and the workers; stops them all."""

    def __init__(
        self,
        settings: Settings,
        *,
        workers: Sequence[str] = DEFAULT_WORKERS,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        # `ingest` runs `settings.ingest_workers` times (the copies share the partitions) and
        # `relay` `settings.relay_workers` times (one share of ledger.events each).
        copies = {"ingest": settings.ingest_workers, "relay": settings.relay_workers}
        self.worker_names = tuple(
            instance
            for name in workers
            for instance in [name, *(f"{name}-{n}" for n in range(2, copies.get(name, 1) + 1))]
        )
        self.extra_env = dict(extra_env or {})
        self.broker: EmbeddedBroker | None = None
        self.bootstrap = ""
        self.children: dict[str, _Child] = {}

    def start(self, stop: threading.Event | None = None) -> None:
        """Broker, topics, schema (retried through outages), then every worker.

        A stop requested while the start waits to retry ends it before any worker starts.
        """
        # A bad policy file fails here, once, with its reason; not in every worker, repeatedly.
        load_policy(self.settings.policy)
        if self.settings.kafka_bootstrap:
            self.bootstrap = self.settings.kafka_bootstrap
        else:
            port = self.settings.broker_port
            if is_listening("127.0.0.1", port):
                log.info("using the broker already listening", port=port)
            else:
                self.broker = EmbeddedBroker(port)
                self.broker.start()
                log.info("embedded broker started (messages in memory only)", port=port)
            self.bootstrap = f"127.0.0.1:{port}"
        if not prepare_deployment_patiently(self.bootstrap, self.settings, stop):
            log.info("stop requested during the start: no worker started")
            return
        for name in self.worker_names:
            self.children[name] = _Child(name, self._spawn(name))
        log.info("ledger running", bootstrap=self.bootstrap, workers=list(self.worker_names))

    def _spawn(self, name: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env["LEDGER_KAFKA_BOOTSTRAP"] = self.bootstrap
        env["LEDGER_DATABASE_URL"] = self.settings.database_url
        if self.settings.policy is not None:
            # Settings given in code (the demo's policy) reach the workers as they reach us.
            env["LEDGER_POLICY"] = str(self.settings.policy)
        worker, _, copy = name.partition("-")
        if worker == "relay":
            # relay tries share 0 first, relay-2 share 1, ...: settled at once on a clean start.
            env["LEDGER_RELAY_SHARE"] = str(int(copy or 1) - 1)
        # The parent-death signal is tied to the spawning thread: spawn from the main thread.
        return subprocess.Popen(
            [sys.executable, "-m", "ledger.workers", worker],
            env=env,
            preexec_fn=set_parent_death_signal,
        )

    def check(self) -> None:
        """Restart any worker that exited; give up after worker_restart_max restarts."""
        for child in self.children.values():
            code = child.process.poll()
            if code is None:
                continue
            child.restarts += 1
            if child.restarts > limits.worker_restart_max:
                raise SupervisorFailed(f"worker {child.name} exited {child.restarts} times")
            log.error(
                "worker exited: restarting",
                worker=child.name,
                exit_code=code,
                restarts=child.restarts,
            )
            time.sleep(min(limits.backoff_initial_s * child.restarts, limits.backoff_max_s))
            child.process = self._spawn(child.name)
            child.started_at = time.monotonic()

    def run_until(self, stop: threading.Event) -> None:
        """Supervise until `stop` is set."""
        while not stop.wait(limits.supervisor_check_interval_s):
            self.check()

    def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after the grace period) and our broker."""
        for child in self.children.values():
            if child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + limits.shutdown_grace_s
        for child in self.children.values():
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                log.warning("worker did not stop in time: killing it", worker=child.name)
                child.process.kill()
                child.process.wait()
        self.children.clear()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        log.info("ledger stopped")
