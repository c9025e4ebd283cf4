"""Schema preparations run by several processes released at the same moment."""

from __future__ import annotations

import multiprocessing
import traceback
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from ledger.deploy_setup import prepare_database
from ledger.persistence.urls import parse_database_url

WAIT_S = 120.0


def _prepare_together(database_url: str, barrier: Barrier, outcomes: Queue[str]) -> None:
    """In a child process: wait for every other preparer, then prepare the schema."""
    try:
        target = parse_database_url(database_url)
        barrier.wait(timeout=WAIT_S)
        prepare_database(target)
        outcomes.put("ok")
    except BaseException:
        outcomes.put(traceback.format_exc())


def prepare_at_once(database_url: str, processes: int) -> list[str]:
    """Run `processes` schema preparations released at the same moment; their outcomes."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    outcomes: Queue[str] = context.Queue()
    children = [
        context.Process(target=_prepare_together, args=(database_url, barrier, outcomes))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    results = [outcomes.get(timeout=WAIT_S) for _ in children]
    for child in children:
        child.join(timeout=WAIT_S)
    return results
