"""Starting and stopping the benchmark's worker processes (they die with the benchmark)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import orjson

from ledger.kafka.broker import set_parent_death_signal

READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0


class WorkerFailed(RuntimeError):
    """A benchmark worker exited or never became ready."""


class Worker:
    """One child process: a benchmark worker (`ledger.bench.worker`) or a ledger worker."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        # The parent-death signal is tied to the spawning thread: spawn from the main thread.
        self.process = subprocess.Popen(
            [sys.executable, *argv],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=self._log,
            preexec_fn=set_parent_death_signal,
        )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Block until the worker prints `ready`; return the monotonic time it did."""
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            readable, _, _ = select.select([stdout], [], [], 0.05)
            if readable:
                line = stdout.readline()
                if line.strip() == b"ready":
                    return time.monotonic()
                if not line:
                    break
            self.check()
        self.check()
        raise WorkerFailed(f"{self.name} did not become ready: {self.log_tail()}")

    def check(self) -> None:
        """Raise if the worker has exited."""
        code = self.process.poll()
        if code is not None:
            raise WorkerFailed(f"{self.name} exited with {code}: {self.log_tail()}")

    def log_tail(self, chars_max: int = 2000) -> str:
        """The end of the worker's stderr."""
        self._log.flush()
        try:
            return self.log_path.read_text("utf-8", "replace")[-chars_max:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


def bench_worker(name: str, config: dict[str, Any], log_dir: Path) -> Worker:
    """Start `python -m ledger.bench.worker` with this configuration."""
    return Worker(
        name,
        ["-m", "ledger.bench.worker", orjson.dumps(config).decode()],
        {},
        log_dir / f"{name}.log",
    )


def ledger_worker(name: str, database_url: str, bootstrap: str, log_dir: Path) -> Worker:
    """Start one of the ledger's own workers (`python -m ledger.workers NAME`)."""
    env = {
        "LEDGER_DATABASE_URL": database_url,
        "LEDGER_KAFKA_BOOTSTRAP": bootstrap,
        "LEDGER_LOG_FORMAT": "json",
        "LEDGER_LOG_LEVEL": "warning",
    }
    return Worker(name, ["-m", "ledger.workers", name], env, log_dir / f"{name}.log")
