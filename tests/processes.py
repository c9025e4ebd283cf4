"""Whether a process is gone, as far as the tests are concerned."""

from __future__ import annotations

import os


def gone(pid: int) -> bool:
    """No thread of the process runs any more.

    A zombie nobody reaps counts as gone (this machine's PID 1 does not reap orphans), but only
    once every thread has exited: after SIGKILL the thread-group leader shows as a zombie while
    the other threads are still being torn down, and they hold the process's sockets and files
    until the last one is gone.
    """
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state not in ("Z", "X"):
            return False
    return True
