"""One run per OUTPUT_DIR: a lock file that refuses a second train.py into a folder in use.

OUTPUT_DIR/run.lock holds the owner's pid, host, start time and command line, and is held with an exclusive
flock while the run lives. The kernel drops a flock when its process dies, however it dies (kill -9, the OOM
killer), so the lock of a dead run is free by construction; the file it leaves is then taken over with a warning
naming the dead owner. On a file system without flock (some network or FUSE mounts) a lock file is live
when its owner is a running process on this host, or any process on another host (which cannot be checked).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from config import UserError
from engine.reporting.run_files import LOCK_NAME, DiskWriteError


class FolderInUseError(UserError):
    """Another run holds the lock of this OUTPUT_DIR."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _describe(owner: dict) -> str:
    started = owner.get("started")
    since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if started else ""
    return f"process {owner.get('pid', '?')} on {owner.get('host', '?')}{since}"


class RunLock:
    """The lock of one run folder; `acquire()` when the run starts, `release()` when it ends (train() does, in a
    finally clause; a process that dies without it leaves a file whose flock the kernel has dropped)."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / LOCK_NAME
        self.handle = None

    def _read_owner(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> str | None:
        """Take the lock, or raise FolderInUseError naming the owner; DiskWriteError when the folder cannot be
        written (read-only, no permission, full). Returns the description of a dead owner whose lock file was
        taken over (for a warning once logging is set up), else None."""
        for _ in range(5):
            handle, previous = self._lock_once()
            # a run that ended between our open and our flock deleted the file we hold: lock the new one instead
            try:
                if os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        else:
            raise FolderInUseError(f"OUTPUT_DIR {self.path.parent}: could not take the lock {self.path}; try again")
        taken_over = _describe(previous) if previous.get("pid") and previous.get("pid") != os.getpid() else None
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": sys.argv}
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(owner) + "\n")
            handle.flush()
        except OSError as err:
            handle.close()
            raise DiskWriteError(self.path, err) from None
        self.handle = handle
        return taken_over

    def _lock_once(self):
        try:
            handle = open(self.path, "a+")  # noqa: SIM115 (held open for the run's life)
        except OSError as err:
            raise DiskWriteError(self.path, err) from None
        previous = self._read_owner()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise FolderInUseError(
                f"OUTPUT_DIR {self.path.parent} is in use by {_describe(previous)} (lock file {self.path}); wait "
                "for that run to end or choose another OUTPUT_DIR"
            ) from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                handle.close()
                raise DiskWriteError(self.path, err) from None
            self._check_owner_without_flock(previous, handle)
        return handle, previous

    def _check_owner_without_flock(self, previous: dict, handle) -> None:
        pid, host = previous.get("pid"), previous.get("host")
        if not pid:
            return
        if host != socket.gethostname() or _process_alive(int(pid)):
            handle.close()
            raise FolderInUseError(
                f"OUTPUT_DIR {self.path.parent} is in use by {_describe(previous)} (lock file {self.path}, which "
                "this file system cannot lock); wait for that run to end, or delete the lock file if it is gone"
            )

    def release(self) -> None:
        """Give the lock up and delete the file (a no-op when not held)."""
        if self.handle is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # the folder became unwritable: the flock still goes with the handle
        self.handle.close()
        self.handle = None
