"""The output folder of a training run: one run at a time, and a fresh run never mixed with a dead one's files.

:class:`RunLock` is ``OUTPUT/train.lock``, held (``fcntl.flock``) by the process that writes the folder
(rank 0) for as long as it trains, and holding its pid and host. :func:`move_leftovers_aside` moves the
files of an earlier run that left no checkpoint into ``OUTPUT/previous-<timestamp>/``.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from swiftdet.errors import OutputFolderInUseError

__all__ = ["LOCK_NAME", "RunLock", "move_leftovers_aside", "run_leftovers"]

LOCK_NAME = "train.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _describe(holder: dict[str, Any]) -> str:
    started = f", started {holder['started']}" if holder.get("started") else ""
    command = f", command: {holder['command']}" if holder.get("command") else ""
    return f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}{started}{command}"


class RunLock:
    """The lock of one run's output folder; :meth:`acquire` takes it or raises OutputFolderInUseError.

    ``flock`` is taken atomically and the kernel drops it when its process dies, however it dies; the
    pid and host in the file name the holder in the refusal, and tell a dead holder's file (kill -9)
    from a live one where the filesystem has no ``flock``.
    """

    def __init__(self, path: Path, fd: int, took_over: str | None):
        self.path = path
        self._fd: int | None = fd
        self.took_over = took_over  # a line to log when a dead process's lock was taken over

    @classmethod
    def acquire(cls, output_dir: str | Path) -> "RunLock":
        path = Path(output_dir) / LOCK_NAME
        host, pid = socket.gethostname(), os.getpid()
        for _ in range(20):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                lock = cls._try(path, fd, host, pid)
            except BaseException:
                os.close(fd)
                raise
            if lock is not None:
                return lock
            os.close(fd)  # the file was replaced or removed between open and flock: take the new one
        raise OutputFolderInUseError(f"Could not take the lock {path}: it keeps being replaced by another process.")

    @classmethod
    def _try(cls, path: Path, fd: int, host: str, pid: int) -> "RunLock | None":
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            flocked = True
        except BlockingIOError:
            raise OutputFolderInUseError(
                f"Output folder '{path.parent}' is in use by another training run: {_describe(_read(path))} holds "
                f"{path}. Two runs in one folder would mix their metrics and replace each other's checkpoints. Wait "
                "for that run to end (or stop it), or choose another --output folder; nothing was changed."
            ) from None
        except OSError:
            flocked = False  # a filesystem without flock: the pid check below is all there is
        try:
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                return None
        except FileNotFoundError:
            return None
        holder = _read_fd(fd)
        took_over = None
        if holder:
            same_host = holder.get("host") == host
            if not same_host or (not flocked and _alive(int(holder.get("pid", -1)))):
                # Another host's pid cannot be checked from here, so its lock is never taken over.
                raise OutputFolderInUseError(
                    f"Output folder '{path.parent}' is locked by {_describe(holder)} ({path}), which may still be "
                    "training. If no run of this folder is going on any more, delete that file and start again; "
                    "otherwise choose another --output folder. Nothing was changed."
                )
            took_over = (f"took over the lock {path} of {_describe(holder)}, which is no longer running "
                         "(it was killed or crashed)")
        record = {"pid": pid, "host": host, "started": datetime.datetime.now().isoformat(timespec="seconds"),
                  "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record) + "\n").encode())
        os.fsync(fd)
        return cls(path, fd, took_over)

    def release(self) -> None:
        """Remove the lock file (if it is still this lock's) and drop the lock; safe to call twice."""
        if self._fd is None:
            return
        try:
            # Unlink before unlocking, so a waiting process never takes a lock on a file about to vanish.
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None


def _read_fd(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return _parse(data)


def _read(path: Path) -> dict[str, Any]:
    try:
        return _parse(path.read_bytes())
    except OSError:
        return {}


def _parse(data: bytes) -> dict[str, Any]:
    try:
        holder = json.loads(data.decode() or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"pid": "?", "host": "?"}  # written by something else: never taken over silently
    return holder if isinstance(holder, dict) else {"pid": "?", "host": "?"}


def run_leftovers(output_dir: str | Path) -> list[Path]:
    """The files a run writes that are in ``output_dir`` (checkpoints/ only when not empty)."""
    output_dir = Path(output_dir)
    names = ("config.yaml", "metrics.jsonl", "log.txt", "model_final.pth", "report.txt", "val_predictions")
    found = [output_dir / name for name in names if (output_dir / name).exists()]
    found += sorted(output_dir.glob("events.out.tfevents.*"))
    checkpoints = output_dir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        found.append(checkpoints)
    return found


def move_leftovers_aside(output_dir: str | Path) -> tuple[Path, list[str]] | None:
    """Move the files of an earlier run in ``output_dir`` into ``output_dir/previous-<timestamp>/``.

    For a fresh run only (the caller has checked there is no checkpoint to resume, and holds the
    lock). Returns (that folder, the names moved), or None when there was nothing to move.

    Moved rather than refused: the usual case is the same command started again after a run died
    before its first checkpoint, and refusing would make every such user clean up by hand; moving
    keeps every file (a rename in the same folder, nothing is deleted or copied) and keeps the new
    run's metrics and TensorBoard files its own.
    """
    output_dir = Path(output_dir)
    found = run_leftovers(output_dir)
    if not found:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = output_dir / f"previous-{stamp}"
    n = 1
    while True:
        try:
            target.mkdir()
            break
        except FileExistsError:
            n += 1
            target = output_dir / f"previous-{stamp}-{n}"
    for item in found:
        os.replace(item, target / item.name)
    return target, [item.name + ("/" if item.name == "checkpoints" else "") for item in found]
