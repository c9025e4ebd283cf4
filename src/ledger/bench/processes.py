"""Starting and stopping the benchmark's worker processes (they die with the benchmark)."""

from __future__ import annotations

import contextlib
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
READY_POLL_S = 0.05
"""How often a wait for `ready` checks that the worker is still alive."""
READ_CHUNK_BYTES = 64 * 1024
"""Bytes read from a worker's output at once (its lines are short)."""


class WorkerFailed(RuntimeError):
    """A benchmark worker exited or never became ready."""


class Worker:
    """One child process: a benchmark worker (`ledger.bench.worker`) or a ledger worker."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        *,
        interactive: bool = False,
    ) -> None:
        """Start the child; with `interactive` its stdin is a pipe that `tell()` writes to."""
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self._unread = bytearray()
        # The parent-death signal is tied to the spawning thread: spawn from the main thread.
        self.process = subprocess.Popen(
            [sys.executable, *argv],
            env={**os.environ, **env},
            stdin=subprocess.PIPE if interactive else None,
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
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.read_line(READY_POLL_S)
            if line is not None and line.strip() == b"ready":
                return time.monotonic()
            self.check()
        self.check()
        raise WorkerFailed(f"{self.name} did not become ready: {self.log_tail()}")

    def read_line(self, timeout_s: float) -> bytes | None:
        """The next line the worker printed (without its newline); None if none came in time."""
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._unread:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([stdout], [], [], max(0.0, remaining))
            if not readable:
                return None
            # Unbuffered reads: a buffered readline could hold a second line where select
            # cannot see it.
            chunk = os.read(stdout.fileno(), READ_CHUNK_BYTES)
            if not chunk:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=STOP_GRACE_S)
                self.check()
                raise WorkerFailed(f"{self.name} closed its output: {self.log_tail()}")
            self._unread += chunk
        line, _, rest = bytes(self._unread).partition(b"\n")
        self._unread = bytearray(rest)
        return line

    def tell(self, line: str) -> None:
        """Write one line to an interactive worker's stdin."""
        stdin = self.process.stdin
        if stdin is None:
            raise WorkerFailed(f"{self.name} was not started interactive")
        stdin.write(line.encode() + b"\n")
        stdin.flush()

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
        if self.process.stdin is not None:
            self.process.stdin.close()
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


def bench_worker(
    name: str, config: dict[str, Any], log_dir: Path, *, interactive: bool = False
) -> Worker:
    """Start `python -m ledger.bench.worker` with this configuration."""
    return Worker(
        name,
        ["-m", "ledger.bench.worker", orjson.dumps(config).decode()],
        {},
        log_dir / f"{name}.log",
        interactive=interactive,
    )
