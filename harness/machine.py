"""What this process may use of the machine, without importing torch (the pytest plugin asks at
start-up): the CPUs it may run on, and a free loopback port."""

from __future__ import annotations

import os
import socket


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (a container pinned to 2 of 64 cores has 2)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def free_port() -> int:
    """A port that no process on 127.0.0.1 listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
