"""CPU time per process, as the operating system counts it (user + system, every thread).

A meter is read once when a timed run starts and once when it ends; the difference is the CPU
each role spent on the run. On PostgreSQL the server's backend processes of one database are a
role too: processes named `postgres` whose command line (`postgres: user dbname host(port)
state`, which the server sets) names the database; the benchmark's own connections (it polls
for the end of the run) are left out by their client port. Backends and autovacuum workers of
that database count; the server's shared processes (WAL writer, checkpointer) do not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import psutil

MICROSECONDS = 1_000_000
"""Microseconds in a second."""
POSTGRES_PROCESS_NAME = "postgres"
"""What the server's processes are called (their command lines say which is which)."""
_CLIENT_PORT = re.compile(r"\((\d+)\)")


def cpu_seconds(process: psutil.Process) -> float:
    """User plus system CPU of a process (all its threads) so far; 0 if it is gone."""
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def _own_client_ports(server_port: int) -> set[int]:
    """Local ports of this process's TCP connections to the database server."""
    try:
        connections = psutil.Process(os.getpid()).net_connections(kind="tcp")
    except psutil.Error:
        return set()
    return {
        connection.laddr.port
        for connection in connections
        if connection.raddr and connection.raddr.port == server_port
    }


def postgres_backends(dbname: str, server_port: int) -> dict[int, float]:
    """CPU seconds so far of each backend of `dbname` on this machine, ours left out."""
    own = _own_client_ports(server_port)
    found: dict[int, float] = {}
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            if process.info["name"] != POSTGRES_PROCESS_NAME:
                continue
            words = " ".join(process.info["cmdline"] or ()).split()
        except psutil.Error:
            continue
        if dbname not in words:
            continue
        port = _CLIENT_PORT.search(" ".join(words))
        if port is not None and int(port.group(1)) in own:
            continue
        found[process.pid] = cpu_seconds(process)
    return found


@dataclass
class CpuMeter:
    """CPU spent by named roles (each some processes) between `start()` and `stop()`."""

    roles: Mapping[str, Sequence[int]]
    """Role name to process ids."""
    postgres_database: str | None = None
    """On PostgreSQL, the database whose backends form the role `postgres`."""
    postgres_port: int | None = None
    """The server's port (to tell the benchmark's own connections apart)."""
    _processes: dict[int, psutil.Process] = field(default_factory=dict)
    _started: dict[str, float] = field(default_factory=dict)
    _started_backends: dict[int, float] = field(default_factory=dict)

    def _role_seconds(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for role, pids in self.roles.items():
            total = 0.0
            for pid in pids:
                process = self._processes.get(pid)
                if process is None:
                    process = self._processes[pid] = psutil.Process(pid)
                total += cpu_seconds(process)
            totals[role] = total
        return totals

    def _backends(self) -> dict[int, float]:
        if self.postgres_database is None or self.postgres_port is None:
            return {}
        return postgres_backends(self.postgres_database, self.postgres_port)

    def start(self) -> None:
        """Read every role's CPU so far."""
        self._started = self._role_seconds()
        self._started_backends = self._backends()

    def stop(self) -> dict[str, float]:
        """CPU seconds each role spent since `start()`; `postgres` too when its backends were
        found (not when the server runs on another machine)."""
        ended = self._role_seconds()
        spent = {role: max(0.0, ended[role] - self._started.get(role, 0.0)) for role in ended}
        backends = self._backends()
        if backends:
            # A backend that appeared during the run counts in full (its start is cheap).
            spent["postgres"] = sum(
                max(0.0, seconds - self._started_backends.get(pid, 0.0))
                for pid, seconds in backends.items()
            )
        return spent


def per_event_us(spent_s: Mapping[str, float], events: int) -> dict[str, float]:
    """CPU microseconds per event of each role."""
    return {role: round(seconds * MICROSECONDS / events, 1) for role, seconds in spent_s.items()}
