"""Resident memory of the ledger's own processes (never the broker's), sampled during a run."""

from __future__ import annotations

from dataclasses import dataclass, field

import psutil

MEGABYTE = 1024 * 1024


@dataclass
class MemorySampler:
    """RSS samples of some processes: the value once 10% of the work is done, the last, the peak."""

    pids: list[int]
    start_bytes: int | None = None
    end_bytes: int = 0
    peak_bytes: int = 0
    samples: int = 0
    _processes: dict[int, psutil.Process] = field(default_factory=dict)

    def rss_bytes(self) -> int:
        """The summed resident memory of the sampled processes now (0 for any that exited)."""
        total = 0
        for pid in self.pids:
            process = self._processes.get(pid)
            if process is None:
                process = self._processes[pid] = psutil.Process(pid)
            try:
                total += int(process.memory_info().rss)
            except psutil.Error:
                continue
        return total

    def sample(self, done_share: float) -> None:
        """Take one sample; `done_share` (0..1) is how much of the run's work is done."""
        rss = self.rss_bytes()
        if rss == 0:
            return
        self.samples += 1
        self.end_bytes = rss
        self.peak_bytes = max(self.peak_bytes, rss)
        if self.start_bytes is None and done_share >= 0.1:
            self.start_bytes = rss

    def report(self) -> dict[str, float]:
        """`start_mb` (after the first 10%), `end_mb`, `peak_mb`, and the growth ratio."""
        start = self.start_bytes if self.start_bytes is not None else self.end_bytes
        return {
            "start_mb": round(start / MEGABYTE, 1),
            "end_mb": round(self.end_bytes / MEGABYTE, 1),
            "peak_mb": round(self.peak_bytes / MEGABYTE, 1),
            "end_over_start": round(self.end_bytes / start, 3) if start else 0.0,
            "samples": self.samples,
        }
