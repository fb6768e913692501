"""One writer per run directory: a run holds an advisory lock on <workdir>/.lock while it trains.

The lock is flock(2) on an open file, so the kernel releases it when the process dies however it dies:
a lock left by a killed run is taken over by the next run, never waited for. The file records who holds
it (pid, host, start time) for the message a second run gets. Under torchrun only rank 0 takes it.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator

LOCK_NAME = ".lock"


class RunLocked(RuntimeError):
    """Another live run holds the run directory."""


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 400).decode(errors="replace").strip()
    return text or "an unknown process"


@contextlib.contextmanager
def run_lock(workdir: str) -> Iterator[None]:
    """Hold workdir's lock for the duration of the block; RunLocked if a live run holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunLocked(f"{workdir} is in use by another fastscore run ({_holder(fd)}); wait for it to end "
                            "or choose another --workdir") from None
        previous = _holder(fd) if os.fstat(fd).st_size else None
        if previous:
            print(f"fastscore: taking over the lock of a run that ended without releasing it ({previous})",
                  file=sys.stderr)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # an empty file: released cleanly
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
