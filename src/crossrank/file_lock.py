"""An exclusive advisory lock on a file, for caches that several processes may fill at once: the first builds while
the others wait, then find the finished entry. `flock` is released by the kernel when its holder dies, so a killed
builder never leaves the lock held."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive_lock(lock_file: Path) -> Iterator[None]:
    with lock_file.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
