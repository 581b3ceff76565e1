"""Errors raised while running the embedded services."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tenantry.errors import TenantryError


class ServiceError(TenantryError):
    """An embedded service could not be installed, started or stopped."""


def pidfile_alive(pidfile: Path) -> bool:
    """Whether ``pidfile`` names a process that is still running."""
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def stop_by_pidfile(pidfile: Path, name: str, timeout: float) -> None:
    """SIGTERM the process named in ``pidfile`` and wait until it is gone (then remove the
    file); a no-op when there is no pidfile or no such process."""
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pidfile.unlink(missing_ok=True)
            return
        time.sleep(0.05)
    raise ServiceError(f"{name} (pid {pid}) did not stop within {timeout:.0f} s")
